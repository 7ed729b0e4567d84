"""A node that stops reporting is declared lost by the replicas themselves (fleet/replica_sweep.py), with no
controller at all (tests/fleet_direct.py: node servers started without Ray, as when the head lost its GCS).

The replicas here declare a node lost after 3 s of silence (``OPENCONE_FLEET_NODE_LOST_SECONDS``); the nodes
beat every second. Nodes make record-only computers (tests/fleet_null_driver.py) except the one whose
``/events`` reader is checked, which runs a real browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import wait_until
from fleet_direct import DirectFleet, NodeProcess, start_direct_fleet, start_node
from sqlalchemy import select

from opencone.core.store.db import make_engine, migrate, sessionmaker
from opencone.core.store.models import ComputerRecord, Organization
from opencone.fleet import registry
from opencone.fleet.agent_routes import PREFIX, node_key

pytestmark = pytest.mark.timeout(300)

TESTS = Path(__file__).parent
NULL_NODE = {"OPENCONE_FLEET_TEST_FACTORY": "fleet_null_driver:factory", "PYTHONPATH": str(TESTS)}
LOST_AFTER = 3.0
REPLICA = {"OPENCONE_FLEET_NODE_LOST_SECONDS": str(LOST_AFTER)}


def _kill(node: NodeProcess) -> None:
    """The node's machine dies: its server and everything under it (browsers), at once."""
    tree = psutil.Process(node.proc.pid).children(recursive=True)
    node.proc.kill()
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    node.proc.wait(10)


def _record(fleet: DirectFleet, cid: str) -> tuple[str, str | None]:
    body = fleet.client().computers.retrieve(cid).to_dict()
    return body["status"], body.get("termination_reason")


def _nodes(fleet: DirectFleet) -> dict[str, dict[str, Any]]:
    with fleet.http() as h:
        return {n["id"]: n for n in h.get("/nodes").json()}


def _create_on(fleet: DirectFleet, node_id: str, count: int) -> list[str]:
    made = [fleet.client().computers.create(kind="browser", extra_body={"node_hint": node_id}).id
            for _ in range(count)]
    assert {fleet.node_of(c) for c in made} == {node_id}
    return made


def _sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield json.loads("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


@pytest.fixture()
def null_fleet(tmp_path: Path, postgres: Any) -> Iterator[DirectFleet]:
    fleet = start_direct_fleet(tmp_path, postgres, nodes=2, replicas=2, browser_slots=4, desktop_slots=0,
                               node_env=NULL_NODE, replica_env=REPLICA)
    yield fleet
    fleet.stop()


def test_a_killed_node_is_declared_lost_and_only_its_computers_end(null_fleet: DirectFleet) -> None:
    fleet = null_fleet
    victim, survivor = fleet.nodes[0].node_id, fleet.nodes[1].node_id
    lost, kept = _create_on(fleet, victim, 2), _create_on(fleet, survivor, 2)
    t0 = time.monotonic()
    _kill(fleet.nodes[0])
    assert wait_until(lambda: all(_record(fleet, c)[0] == "terminated" for c in lost), 15, 0.2), \
        [_record(fleet, c) for c in lost]
    print(f"\nnode killed -> node_lost in {time.monotonic() - t0:.1f} s")
    assert [_record(fleet, c) for c in lost] == [("terminated", "node_lost")] * 2
    assert [_record(fleet, c) for c in kept] == [("ready", None)] * 2  # the other node's are untouched
    nodes = _nodes(fleet)
    assert nodes[victim]["state"] == "dead" and nodes[victim]["reserved_browser"] == 0, nodes[victim]
    assert nodes[survivor]["state"] == "ready" and nodes[survivor]["live_browser"] == 2, nodes[survivor]
    # creates go to the live node, up to its slots, then a full fleet's 429
    with fleet.http() as h:
        made = [h.post("/computers", json={"kind": "browser"}) for _ in range(3)]
    assert [r.status_code for r in made] == [200, 200, 429], [r.text for r in made]
    assert {fleet.node_of(r.json()["id"]) for r in made[:2]} == {survivor}
    assert [_record(fleet, c) for c in kept] == [("ready", None)] * 2
    # both replicas watch; one of them declared the node, once
    verdicts = [r.log().count(f"node {victim} has not reported") for r in fleet.replicas]
    assert sorted(verdicts) == [0, 1], verdicts
    # a record written just after the verdict (its create answered just before) is ended as well
    org = fleet.sql("SELECT org_id FROM api_keys LIMIT 1")[0][0]
    fleet.sql("INSERT INTO computers (id, org_id, kind, status, created_at, last_activity_at, max_lifetime_seconds, "
              "inactivity_timeout_seconds, idle_timeout_enabled, display_width, display_height, display_scale, "
              f"persistent, options, node_id) VALUES ('late-record', '{org}', 'browser', 'ready', now(), now(), "
              f"3600, 600, true, 1024, 768, 1.0, false, '{{}}', '{victim}')")
    assert wait_until(lambda: _record(fleet, "late-record") == ("terminated", "node_lost"), 15, 0.2), \
        _record(fleet, "late-record")


def test_an_events_reader_of_a_lost_node_gets_terminated(tmp_path: Path, postgres: Any) -> None:
    """The victim runs a real browser; the survivor makes record-only computers."""
    fleet = start_direct_fleet(tmp_path, postgres, nodes=1, browser_slots=1, desktop_slots=0, replica_env=REPLICA)
    try:
        fleet.nodes.append(start_node(tmp_path / "nodes", "node-null", fleet.url, fleet.token, browser_slots=2,
                                      desktop_slots=0, env=NULL_NODE))
        assert wait_until(lambda: _nodes(fleet).get("node-null", {}).get("state") == "ready", 30)
        [cid] = _create_on(fleet, fleet.nodes[0].node_id, 1)
        [other] = _create_on(fleet, "node-null", 1)
        events: list[dict[str, Any]] = []
        subscribed = threading.Event()

        def listen() -> None:
            with httpx.stream("GET", f"{fleet.replica.base_url}/computers/{cid}/events",
                              headers={"authorization": f"Bearer {fleet.key}"}, timeout=60) as r:
                for data in _sse(r.iter_lines()):
                    events.append(data)
                    subscribed.set()

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        assert subscribed.wait(30), events
        _kill(fleet.nodes[0])
        reader.join(30)
        assert not reader.is_alive(), events
        ended = [e for e in events if e["type"] == "terminated"]
        assert [e["reason"] for e in ended] == ["node_lost"], events
        assert _record(fleet, cid) == ("terminated", "node_lost")
        assert _record(fleet, other) == ("ready", None)
    finally:
        fleet.stop()


def test_a_postgresql_outage_longer_than_the_threshold_ends_no_live_node(tmp_path: Path) -> None:
    """While PostgreSQL is away no node can beat: a replica counts their silence only once it has reached
    the database again for longer than the threshold plus a heartbeat."""
    from postgres import PostgresServer

    pg = PostgresServer()  # its own: this test stops it
    fleet = None
    try:
        fleet = start_direct_fleet(tmp_path, pg, nodes=2, replicas=2, browser_slots=4, desktop_slots=0,
                                   node_env=NULL_NODE, replica_env=REPLICA)
        made = _create_on(fleet, fleet.nodes[0].node_id, 1) + _create_on(fleet, fleet.nodes[1].node_id, 1)
        before = {n: (v["state"], v["incarnation"]) for n, v in _nodes(fleet).items()}
        time.sleep(LOST_AFTER + 3)  # the replicas have watched long enough to declare
        pg.stop()
        time.sleep(3 * LOST_AFTER)  # longer than the threshold, and the heartbeat TTL of the view
        pg.start()
        time.sleep(3 * LOST_AFTER + 3)  # past when a replica that counted through the outage would declare
        assert {n: (v["state"], v["incarnation"]) for n, v in _nodes(fleet).items()} == before
        assert [_record(fleet, c) for c in made] == [("ready", None)] * 2
        for replica in (0, 1):  # and both replicas still create on both nodes
            with fleet.http(replica=replica) as h:
                for node in before:
                    answer = h.post("/computers", json={"kind": "browser", "node_hint": node})
                    assert answer.status_code == 200, answer.text
    finally:
        if fleet is not None:
            fleet.stop()
        pg.close()


def test_a_node_declared_lost_while_alive_ends_its_computers_and_registers_again(null_fleet: DirectFleet) -> None:
    """A node paused (SIGSTOP) past the threshold is declared lost; resumed, its heartbeat is refused, so it
    ends its computers and registers as its next incarnation, and takes creates again."""
    fleet = null_fleet
    node = fleet.nodes[0]
    mine = _create_on(fleet, node.node_id, 2)
    incarnation = _nodes(fleet)[node.node_id]["incarnation"]
    node.proc.send_signal(signal.SIGSTOP)
    try:
        assert wait_until(lambda: _nodes(fleet)[node.node_id]["state"] == "dead", 15, 0.2)
        assert [_record(fleet, c) for c in mine] == [("terminated", "node_lost")] * 2
    finally:
        node.proc.send_signal(signal.SIGCONT)

    def back() -> bool:
        row = _nodes(fleet)[node.node_id]
        return row["state"] == "ready" and row["incarnation"] == incarnation + 1 and row["live_browser"] == 0

    assert wait_until(back, 20, 0.2), _nodes(fleet)[node.node_id]
    assert [_record(fleet, c) for c in mine] == [("terminated", "node_lost")] * 2  # the verdict stands
    org = fleet.sql(f"SELECT org_id FROM computers WHERE id = '{mine[0]}'")[0][0]
    with httpx.Client(base_url=node.url + PREFIX, timeout=10) as h:  # on the node itself, they are gone
        listed = h.get("/computers", headers={"authorization": f"Bearer {node_key(fleet.token, org)}",
                                              "x-opencone-org": org})
    assert listed.status_code == 200 and not [c for c in listed.json() if c["id"] in mine
                                              and c["status"] != "terminated"], listed.text
    again = _create_on(fleet, node.node_id, 1)
    assert _record(fleet, again[0]) == ("ready", None)


def test_replicas_declaring_a_node_at_once_declare_it_once(postgres_url: str) -> None:
    """The verdict is conditional on the report the replica read: of many at once one ends the computers, and
    a report read before the node registered again (or beat) declares nothing."""
    asyncio.run(_declare_at_once(postgres_url))


async def _declare_at_once(url: str) -> None:
    engine = make_engine(url)
    try:
        await migrate(engine)
        sessions = sessionmaker(engine)
        async with sessions() as s:
            s.add(Organization(id="org", name="org", created_at=datetime.now(UTC)))
            await s.commit()
            info = await registry.upsert_node(s, registry.NodeInfo(id="n1", url="http://n1", incarnation=1,
                                                                   capacity_browser=4))
            await registry.upsert_node(s, registry.NodeInfo(id="n2", url="http://n2", incarnation=1))
            s.add_all([_computer(f"c{i}", "n1") for i in range(3)] + [_computer("elsewhere", "n2")])
            await s.commit()
            read = await registry.get_node(s, "n1")
        assert read is not None and read.heartbeat_at == info.heartbeat_at

        async def declare() -> list[str] | None:
            async with sessions() as s:
                return await registry.declare_lost(s, read)

        verdicts = await asyncio.gather(*(declare() for _ in range(8)))
        assert [v for v in verdicts if v is not None] == [["c0", "c1", "c2"]], verdicts
        async with sessions() as s:
            rows = {r.id: (r.status, r.termination_reason) for r in (await s.execute(select(ComputerRecord))).scalars()}
            assert rows.pop("elsewhere") == ("ready", None)
            assert set(rows.values()) == {("terminated", "node_lost")}
            # the node's agent was alive: refused, it registers again; a report read before is stale now
            assert not await registry.heartbeat(s, "n1", live_browser=0, live_desktop=0, free_mem_mb=0, load=0,
                                                incarnation=1)
            await registry.upsert_node(s, dataclasses.replace(read, incarnation=2))
            s.add(_computer("c-new", "n1"))
            await s.commit()
        async with sessions() as s:
            assert await registry.declare_lost(s, read) is None
            node = await registry.get_node(s, "n1")
            assert node is not None and node.state == "ready"
            assert (await s.get(ComputerRecord, "c-new")).status == "ready"  # type: ignore[union-attr]
            assert await registry.heartbeat(s, "n1", live_browser=1, live_desktop=0, free_mem_mb=0, load=0,
                                            incarnation=2)
            assert await registry.declare_lost(s, node) is None  # it beat since that read
            assert (await registry.get_node(s, "n1")).state == "ready"  # type: ignore[union-attr]
    finally:
        await engine.dispose()


def _computer(cid: str, node_id: str) -> ComputerRecord:
    now = datetime.now(UTC)
    return ComputerRecord(id=cid, org_id="org", kind="browser", status="ready", created_at=now, last_activity_at=now,
                          max_lifetime_seconds=3600, inactivity_timeout_seconds=600, idle_timeout_enabled=True,
                          display_width=1280, display_height=720, display_scale=1.0, persistent=False, options={},
                          node_id=node_id)
