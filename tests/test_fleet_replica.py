"""What an API replica serves, against node servers started without Ray (tests/fleet_direct.py).

Each organisation is its own on a node (fleet/agent_routes.py): a replica speaks for the request's
organisation with a key derived from the internal token, so the node's own tenancy keeps one
organisation's computers (and the ids in bodies: tasks, environments, responses) from another's. Attacked
here through the replica with a second organisation's key, and at the node with forged headers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_until
from fleet_direct import DirectFleet, start_direct_fleet

from opencone.fleet.agent_routes import PREFIX, node_key

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[DirectFleet]:
    fleet = start_direct_fleet(tmp_path_factory.mktemp("fleet-direct"), postgres, nodes=2,
                               node_env={"OPENCONE_NODE_ADOPT_GRACE_SECONDS": "1"})
    yield fleet
    fleet.stop()


def test_another_organisation_sees_and_touches_nothing(fleet: DirectFleet, site: str) -> None:
    other = fleet.new_org_key("tenant-b")
    mine = fleet.client().computers.create(kind="browser")
    try:
        theirs = fleet.client(other).computers.create(kind="browser")
        try:
            with fleet.http() as h:
                listed = {c["id"] for c in h.get("/computers").json()}
            with fleet.http(other) as h:
                their_list = {c["id"] for c in h.get("/computers").json()}
                assert h.get(f"/computers/{mine.id}").status_code == 404
                assert h.post(f"/computers/{mine.id}/navigate", json={"url": site}).status_code == 404
                assert h.delete(f"/computers/{mine.id}").status_code == 404
            assert mine.id in listed and theirs.id not in listed
            assert theirs.id in their_list and mine.id not in their_list
            # on its node, each computer belongs to its own organisation, not to one shared node org
            orgs = dict(fleet.sql(f"SELECT id, org_id FROM computers WHERE id IN ('{mine.id}', '{theirs.id}')"))
            assert orgs[mine.id] != orgs[theirs.id]
            fleet.client().computers.navigate(mine.id, url=site)
            with fleet.http() as h:
                assert h.get(f"/computers/{mine.id}").json()["status"] == "ready"
        finally:
            fleet.client(other).computers.delete(theirs.id)
    finally:
        fleet.client().computers.delete(mine.id)


def _node_request(fleet: DirectFleet, path: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(fleet.nodes[0].url + PREFIX + path, headers=headers, timeout=30)


def test_a_node_takes_an_organisation_only_with_its_derived_key(fleet: DirectFleet) -> None:
    token = fleet.token
    assert _node_request(fleet, "/computers", {"authorization": f"Bearer {token}"}).status_code == 200
    good = {"authorization": f"Bearer {node_key(token, 'org_x')}", "x-opencone-org": "org_x"}
    assert _node_request(fleet, "/computers", good).status_code == 200
    forged = [
        {"authorization": f"Bearer {token}", "x-opencone-org": "org_x"},  # the token is not an org's key
        {"authorization": f"Bearer {node_key(token, 'org_y')}", "x-opencone-org": "org_x"},  # another org's
        {"authorization": f"Bearer {node_key('not-the-token', 'org_x')}", "x-opencone-org": "org_x"},
        {"authorization": f"Bearer {node_key(token, '../x')}", "x-opencone-org": "../x"},  # not an org id
    ]
    for headers in forged:
        answer = _node_request(fleet, "/computers", headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert "internal token" in answer.json()["detail"]


def test_a_computer_the_node_made_itself_gets_its_fleet_record(fleet: DirectFleet) -> None:
    """What a node makes without a replica's create (an agent task's computer) is found by any replica."""
    org = fleet.sql("SELECT org_id FROM api_keys LIMIT 1")[0][0]
    node = fleet.nodes[1]
    made = httpx.post(node.url + PREFIX + "/computers", json={"kind": "browser"}, timeout=60,
                      headers={"authorization": f"Bearer {node_key(fleet.token, org)}", "x-opencone-org": org})
    assert made.status_code == 200, made.text
    cid = made.json()["id"]
    try:
        with fleet.http() as h:  # listed at once (the node answers for the organisation)...
            assert cid in {c["id"] for c in h.get("/computers").json()}
        # ...and routed once the node's heartbeat has written its record
        assert wait_until(lambda: bool(fleet.sql(f"SELECT node_id FROM computers WHERE id = '{cid}'")), 20)
        assert fleet.node_of(cid) == node.node_id
        with fleet.http() as h:
            assert h.get(f"/computers/{cid}").json()["id"] == cid
            shot = h.post(f"/computers/{cid}/screenshot", json={})
            assert shot.status_code == 200, shot.text
    finally:
        with fleet.http() as h:
            assert h.delete(f"/computers/{cid}").status_code == 204


def test_what_a_node_makes_itself_is_held_to_its_slots_of_that_kind(fleet: DirectFleet) -> None:
    """A Notte start (or a task's computer, an OpenEnv reset) is made by the node, not by a replica's create:
    it is still held to the node's browser slots, not only to its total (browser + desktop) limit."""
    org = fleet.sql("SELECT org_id FROM api_keys LIMIT 1")[0][0]
    node = fleet.nodes[0]
    headers = {"authorization": f"Bearer {node_key(fleet.token, org)}", "x-opencone-org": org}
    made: list[str] = []
    try:
        for _ in range(3):  # the node's three browser slots
            answer = httpx.post(node.url + PREFIX + "/sessions/start", json={}, headers=headers, timeout=90)
            assert answer.status_code == 200, answer.text
            made.append(answer.json()["session_id"])
        refused = httpx.post(node.url + PREFIX + "/sessions/start", json={}, headers=headers, timeout=90)
        assert refused.status_code == 429, refused.text
        assert "at most 3 browser computers" in refused.text
    finally:
        for sid in made:
            httpx.delete(node.url + PREFIX + f"/sessions/{sid}/stop", headers=headers, timeout=60)


def test_a_replica_bounds_and_checks_bodies_as_a_single_server_does(fleet: DirectFleet) -> None:
    """Before a replica reads a body into memory to place or forward it: too large is a 413 said by its
    Content-Length, too deep or not UTF-8 a 422, all JSON problems, and nothing reaches a node."""
    with fleet.http() as h:
        live_before = len(h.get("/computers").json())
        huge = h.post("/computers", content=b"{" + b" " * (12 << 20) + b"}",
                      headers={"content-type": "application/json"})
        assert huge.status_code == 413 and "bytes" in huge.json()["detail"], huge.text
        deep = h.post("/computers", content=b"[" * 5000 + b"]" * 5000, headers={"content-type": "application/json"})
        assert deep.status_code == 422 and "deep" in deep.json()["detail"], deep.text
        not_utf8 = h.post("/agent/tasks", content=b'{"instruction": "\xff\xfe"}',
                          headers={"content-type": "application/json"})
        assert not_utf8.status_code == 422 and "UTF-8" in not_utf8.json()["detail"], not_utf8.text
        assert len(h.get("/computers").json()) == live_before


def test_a_key_revoked_with_the_cli_is_refused_by_a_replica_that_had_it_cached(fleet: DirectFleet) -> None:
    """A replica keeps a key found valid for a minute, since every change is NOTIFY'd to it: a revocation
    made from the CLI against the fleet database is heard at once, not a minute later."""
    import json
    import os
    import subprocess
    import sys
    import time

    key = fleet.new_org_key("revoked-soon")
    with fleet.http(key) as h:
        assert h.get("/computers").status_code == 200  # now in the replica's cache
        time.sleep(1.5)  # past the one-second cache a replica would use without the NOTIFY
        assert h.get("/computers").status_code == 200
    env = {**os.environ, **fleet.env}
    listed = subprocess.run([sys.executable, "-m", "opencone", "keys", "list", "--json",
                             "--data-dir", str(fleet.tmp / "cli")], env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    key_id = next(json.loads(line)["id"] for line in listed.stdout.splitlines()
                  if line.strip() and json.loads(line)["prefix"] == key[:10])
    subprocess.run([sys.executable, "-m", "opencone", "keys", "revoke", key_id, "--data-dir", str(fleet.tmp / "cli")],
                   env=env, capture_output=True, text=True, timeout=60, check=True)
    with fleet.http(key) as h:
        assert wait_until(lambda: h.get("/computers").status_code == 401, 10)


def test_a_slot_freed_by_a_delete_is_free_for_the_next_create_at_once(tmp_path: Path, postgres: Any) -> None:
    """A node's end of a computer brings its next heartbeat forward (fleet/node_link.py): the freed slot
    shows in the node's row in well under a second, not at the next beat. Heartbeats here are 8 s apart,
    so without that a create right after a delete on the full fleet reads it full and is a 429."""
    fleet = start_direct_fleet(tmp_path, postgres, nodes=1, browser_slots=1, desktop_slots=0,
                               node_env={"OPENCONE_NODE_HEARTBEAT_SECONDS": "8"})
    try:
        with fleet.http() as h:
            first = h.post("/computers", json={"kind": "browser"})
            assert first.status_code == 200, first.text
            assert h.post("/computers", json={"kind": "browser"}).status_code == 429  # the one slot is taken
            assert h.delete(f"/computers/{first.json()['id']}").status_code == 204
            deleted = time.monotonic()
            while True:
                again = h.post("/computers", json={"kind": "browser"})
                if again.status_code != 429 or time.monotonic() - deleted > 1.5:
                    break
                time.sleep(0.05)
            assert again.status_code == 200, f"{time.monotonic() - deleted:.2f} s after the delete: {again.text}"
            assert h.delete(f"/computers/{again.json()['id']}").status_code == 204
    finally:
        fleet.stop()


def _table_reads(h: httpx.Client) -> float:
    """The replica's reads of the nodes table for placement (fleet/nodes_view.py), from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = h.get("/metrics")
    assert resp.status_code == 200, resp.text
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            if sample.name == "opencone_replica_node_table_reads_total" and "node" not in sample.labels:
                return sample.value
    raise AssertionError("no opencone_replica_node_table_reads_total in the replica's /metrics")


def test_spaced_creates_choose_over_the_notified_view_of_the_nodes(fleet: DirectFleet) -> None:
    """The replica keeps its view of the nodes from their NOTIFYs (a trigger on the nodes table): creates
    spaced wider than the view's TTL read the table no more, and a node drained by an operator's plain
    SQL, then made ready again, is left out and then chosen again, all without a read."""
    made: list[str] = []
    with fleet.http() as h:
        try:
            for _ in range(2):  # the view read once after the replica started listening
                made.append(h.post("/computers", json={"kind": "browser"}).json()["id"])
            before = _table_reads(h)
            for _ in range(3):
                time.sleep(1.3)  # longer than the view's TTL without NOTIFY (replica.NODES_TTL, 1 s)
                resp = h.post("/computers", json={"kind": "browser"})
                assert resp.status_code == 200, resp.text
                made.append(resp.json()["id"])
            assert _table_reads(h) == before, "a spaced create read the nodes table"
            for cid in made:
                assert h.delete(f"/computers/{cid}").status_code == 204
            made.clear()
            drained = fleet.nodes[0].node_id
            fleet.sql(f"UPDATE nodes SET state = 'draining' WHERE id = '{drained}'")
            time.sleep(0.5)
            for _ in range(2):
                resp = h.post("/computers", json={"kind": "browser"})
                assert resp.status_code == 200, resp.text
                made.append(resp.json()["id"])
            assert {fleet.node_of(c) for c in made} == {fleet.nodes[1].node_id}
            fleet.sql(f"UPDATE nodes SET state = 'ready' WHERE id = '{drained}'")
            time.sleep(0.5)
            resp = h.post("/computers", json={"kind": "browser"})  # the emptier node, ready again
            assert resp.status_code == 200, resp.text
            made.append(resp.json()["id"])
            assert fleet.node_of(made[-1]) == drained
            assert _table_reads(h) == before, "the drain and its end were read from the table, not heard"
        finally:
            fleet.sql(f"UPDATE nodes SET state = 'ready' WHERE id = '{fleet.nodes[0].node_id}'")
            for cid in made:
                h.delete(f"/computers/{cid}")


def test_a_postgresql_restart_costs_the_next_create_nothing(tmp_path: Path) -> None:
    """After PostgreSQL restarts, the replica's pooled connections are known closed without a round trip
    (core/store/db.py) and replaced at checkout: the first create after the restart is a 200, not a 503."""
    from postgres import PostgresServer

    pg = PostgresServer()  # its own: this test stops it
    fleet = None
    try:
        fleet = start_direct_fleet(tmp_path, pg, nodes=1, browser_slots=50, desktop_slots=0, node_env={
            "OPENCONE_FLEET_TEST_FACTORY": "fleet_null_driver:factory", "PYTHONPATH": str(Path(__file__).parent)})
        with fleet.http() as h:
            for _ in range(3):  # the replica's pools hold connections now
                assert h.post("/computers", json={}).status_code == 200
            pg.stop()  # no request meanwhile: the first one after the restart meets the closed connections
            pg.start()
            node = fleet.nodes[0].node_id  # back in the view once its agent beats again
            assert wait_until(lambda: fleet.sql(f"SELECT state FROM nodes WHERE id = '{node}'") == [["ready"]], 30)
            time.sleep(2.5)  # a heartbeat after the restart (1 s apart), and the replica listening again
            first = h.post("/computers", json={})
            assert first.status_code == 200, first.text
    finally:
        if fleet is not None:
            fleet.stop()
        pg.close()
