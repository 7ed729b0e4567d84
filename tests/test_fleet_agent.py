"""Agent tasks and the model gateway through fleet replicas (fleet/replica_agent.py), against node
servers started without Ray (tests/fleet_direct.py) configured with the fake model providers.

A task started through one replica runs on one node (placed, or its computer's), and everything about
it (status, stream, steering, its computer) is reached through the other replica; a response made
through one replica is chained through the other; another organisation's key finds none of it; bad
input is a 4xx that says why. Clients: the tzafon SDK (tasks), the openai SDK (/v1), httpx.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import tzafon
from conftest import wait_until
from fake_models import FakeModels
from fake_models.site import FormSite
from fleet_direct import DirectFleet, start_direct_fleet
from test_agent_adapters import INSTRUCTION, VALUE, agent_env

from opencone.core.accounts import hash_key
from opencone.fleet.agent_routes import PREFIX, node_key
from opencone.fleet.replica_agent import task_key_id

pytestmark = pytest.mark.timeout(300)

PREVIEW = "openai/computer-use-preview"
EMULATED = "anthropic/claude-sonnet-4-5"  # a response the node keeps in its own store (chains resolve there)
ENDED = ("completed", "failed", "cancelled", "max_steps")


@pytest.fixture(scope="module")
def agent_fleet(tmp_path_factory: pytest.TempPathFactory, postgres: Any,
                fake_models_server: FakeModels) -> Iterator[DirectFleet]:
    tmp = tmp_path_factory.mktemp("fleet-agent")
    env = agent_env(tmp, fake_models_server, OPENCONE_MODEL_MAX_RETRIES="0")
    # placement K=1: a start goes to a random node, so starts of one key at once through two replicas
    # would land on both nodes if nothing but the nodes deduplicated them
    fleet = start_direct_fleet(tmp, postgres, nodes=2, replicas=2, browser_slots=3, desktop_slots=0,
                               node_env=env, replica_env={"OPENCONE_MAX_BODY_BYTES": str(1 << 20),
                                                          "OPENCONE_FLEET_PLACEMENT_K": "1"})
    yield fleet
    fleet.stop()


def _sdk(fleet: DirectFleet, replica: int = 0, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(api_key=key or fleet.key, base_url=f"{fleet.replicas[replica].base_url}/v1", max_retries=0)


def _held_by(fleet: DirectFleet, object_id: str) -> str | None:
    rows = fleet.sql(f"SELECT node_id FROM fleet_objects WHERE id = '{object_id}'")
    return rows[0][0] if rows else None


def _recorded_on(fleet: DirectFleet, computer_id: str) -> str | None:
    rows = fleet.sql(f"SELECT node_id FROM computers WHERE id = '{computer_id}'")
    return rows[0][0] if rows else None


def _status(fleet: DirectFleet, task_id: str, replica: int = 1) -> Any:
    return fleet.client(replica=replica).agent.tasks.retrieve_status(task_id)


def _wait_ended(fleet: DirectFleet, task_id: str, replica: int = 1) -> Any:
    assert wait_until(lambda: _status(fleet, task_id, replica).status in ENDED, 90), _status(fleet, task_id, replica)
    return _status(fleet, task_id, replica)


def _replay(fleet: DirectFleet, task_id: str, replica: int = 1, after: int = 0) -> list[dict[str, Any]]:
    """``GET /agent/tasks/{id}/stream`` (after event ``after``) through the SDK's own SSE decoder."""
    stream = fleet.client(replica=replica).get(f"/agent/tasks/{task_id}/stream", cast_to=object, stream=True,
                                               stream_cls=tzafon.Stream[object],
                                               options={"headers": {"Last-Event-ID": str(after)}})
    return [dict(e) for e in stream]  # type: ignore[arg-type]


def test_a_task_started_through_one_replica_is_reached_through_the_other(
        agent_fleet: DirectFleet, fake_models: FakeModels, form_site: FormSite) -> None:
    fleet = agent_fleet
    task = fleet.client(replica=0).agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW,
                                                     start_url=form_site.form_url, terminate_on_completion=False)
    started = task.to_dict()
    tid, cid = task.task_id, started["computer_id"]
    # the task and its own computer are in the fleet's tables before the client hears of them
    node = _held_by(fleet, tid)
    assert node in {n.node_id for n in fleet.nodes} and _recorded_on(fleet, cid) == node
    try:
        end = _wait_ended(fleet, tid)
        assert end.status == "completed" and end.exit_code == 0, end
        assert form_site.wait_for_submission() == [VALUE]  # what the browser sent, recorded outside opencone
        events = _replay(fleet, tid)
        types = [e["type"] for e in events]
        assert types[0] == "task_started" and types[-1] == "completed" and "action_result" in types, types
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        # screenshot links in the stream are the replica's, and work through the other replica too
        shots = [e["url"] for e in events if e["type"] == "screenshot" and e.get("url")]
        assert shots and all(u.startswith(f"{fleet.replicas[1].base_url}/files/{node}.") for u in shots), shots[:2]
        later = _replay(fleet, tid, replica=0, after=3)  # resumed after event 3, through the other replica
        assert [e["seq"] for e in later] == [e["seq"] for e in events[3:]]
        other_base = shots[0].replace(fleet.replicas[1].base_url, fleet.replicas[0].base_url)
        assert httpx.get(other_base, timeout=30).content[:2] == b"\xff\xd8"
        with fleet.http(replica=1) as h:
            assert h.get(f"/computers/{cid}").json()["status"] == "ready"  # kept: terminate_on_completion false
            listed = h.get("/agent/tasks").json()
            one = h.get(f"/agent/tasks/{tid}").json()
        mine = next(t for t in listed if t["task_id"] == tid)
        assert mine.keys() == one.keys() and mine["status"] == "completed" and one["computer_id"] == cid

        other = fleet.new_org_key("agent-b")
        with fleet.http(other, replica=1) as h:
            assert h.get(f"/agent/tasks/{tid}").status_code == 404
            assert h.get(f"/agent/tasks/{tid}/stream").status_code == 404
            assert h.post(f"/agent/tasks/{tid}/cancel").status_code == 404
            assert h.post(f"/agent/tasks/{tid}/messages", json={"message": "hi"}).status_code == 404
            assert h.get(f"/computers/{cid}").status_code == 404
            assert tid not in {t["task_id"] for t in h.get("/agent/tasks").json()}
            # a task of theirs on my computer: my computer is not theirs (its node says so)
            theirs = h.post("/agent/tasks", json={"instruction": "x", "computer_id": cid, "model": PREVIEW})
            assert theirs.status_code == 404 and "computer" in theirs.json()["detail"], theirs.text
    finally:
        fleet.client().computers.delete(cid)


def test_a_streamed_start_claims_its_task_and_computer_as_the_events_pass(
        agent_fleet: DirectFleet, fake_models: FakeModels, form_site: FormSite) -> None:
    fleet = agent_fleet
    events = [dict(e) for e in fleet.client(replica=1).agent.tasks.start_stream(
        instruction=INSTRUCTION, model=PREVIEW, start_url=form_site.form_url)]
    types = [e["type"] for e in events]
    assert types[0] == "task_started" and types[-1] == "completed", types
    assert events[-1]["exit_code"] == 0 and VALUE in (events[-1]["result"] or "")
    tid, cid = events[0]["task_id"], events[0]["computer_id"]
    assert wait_until(lambda: _held_by(fleet, tid) is not None and _recorded_on(fleet, cid) is not None, 10)
    assert _held_by(fleet, tid) == _recorded_on(fleet, cid)
    assert _status(fleet, tid, replica=0).status == "completed"
    assert form_site.wait_for_submission() == [VALUE]
    # the task's own computer ended with it (terminate_on_completion's default), as on a single server
    with fleet.http() as h:
        assert wait_until(lambda: h.get(f"/computers/{cid}").json()["status"] == "terminated", 20)


def test_tasks_on_given_computers_go_to_their_nodes_and_list_merged(
        agent_fleet: DirectFleet, fake_models: FakeModels, form_site: FormSite) -> None:
    fleet = agent_fleet
    fake_models.script(latency=2.0)  # the tasks are still running while they are listed and cancelled
    client = fleet.client()
    computers = [client.computers.create(kind="browser", extra_body={"node_hint": n.node_id}).id
                 for n in fleet.nodes]
    try:
        started = []
        for cid in computers:
            task = fleet.client(replica=1).agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW, computer_id=cid,
                                                             start_url=form_site.form_url)
            assert task.to_dict()["computer_id"] == cid
            assert _held_by(fleet, task.task_id) == _recorded_on(fleet, cid)  # the computer's node
            started.append(task.task_id)
        with fleet.http() as h:
            listed = h.get("/agent/tasks").json()
            newest = h.get("/agent/tasks", params={"limit": 1}).json()
            running = h.get("/agent/tasks", params={"status": "running"}).json()
        ids = [t["task_id"] for t in listed]
        assert set(started) <= set(ids)
        assert ids.index(started[1]) < ids.index(started[0])  # newest first, over both nodes
        created = [t["created_at"] for t in listed]
        assert created == sorted(created, reverse=True)
        assert [t["task_id"] for t in newest] == [started[1]]
        assert all(t["status"] == "running" for t in running)
        for tid in started:
            with fleet.http(replica=0) as h:
                assert h.post(f"/agent/tasks/{tid}/pause").json()["status"] == "paused"
                assert h.post(f"/agent/tasks/{tid}/resume").json()["status"] == "running"
                assert h.post(f"/agent/tasks/{tid}/messages", json={"message": "hurry"}).json()["status"] == "queued"
            with fleet.http(replica=1) as h:
                assert h.post(f"/agent/tasks/{tid}/cancel").json()["status"] in ("cancelled", "completed")
            assert _wait_ended(fleet, tid).status in ("cancelled", "completed")
        with fleet.http(replica=1) as h:  # the given computers outlive their tasks
            assert all(h.get(f"/computers/{cid}").json()["status"] == "ready" for cid in computers)
    finally:
        for cid in computers:
            client.computers.delete(cid)


def test_a_retried_start_reaches_the_task_of_its_idempotency_key_through_any_replica(
        agent_fleet: DirectFleet, fake_models: FakeModels, form_site: FormSite) -> None:
    fleet = agent_fleet
    fake_models.script(latency=2.0)
    params = {"instruction": INSTRUCTION, "model": PREVIEW, "start_url": form_site.form_url,
              "idempotency_key": "retry-me-once"}
    first = fleet.client(replica=0).agent.tasks.start(**params)
    again = fleet.client(replica=1).agent.tasks.start(**params)
    assert again.task_id == first.task_id and again.reused and not first.reused
    assert fleet.sql(f"SELECT kind, node_id FROM fleet_objects WHERE node_id = '{_held_by(fleet, first.task_id)}' "
                     "AND kind = 'task_key'")
    with fleet.http(replica=1) as h:
        assert h.post(f"/agent/tasks/{first.task_id}/cancel").json()["status"] in ("cancelled", "completed")
    assert _wait_ended(fleet, first.task_id).status in ("cancelled", "completed")


def _key_rows(fleet: DirectFleet, org: str, key: str) -> list[list[str]]:
    return fleet.sql(f"SELECT node_id FROM fleet_objects WHERE kind = 'task_key' AND id = '{task_key_id(org, key)}'")


def _org(fleet: DirectFleet) -> str:
    """The organisation of the fleet's key."""
    return fleet.sql(f"SELECT org_id FROM api_keys WHERE key_hash = '{hash_key(fleet.key)}'")[0][0]


def _cancel(fleet: DirectFleet, task_id: str) -> None:
    with fleet.http(replica=1) as h:
        assert h.post(f"/agent/tasks/{task_id}/cancel").json()["status"] in ("cancelled", "completed")
    assert _wait_ended(fleet, task_id).status in ("cancelled", "completed")


def test_starts_of_one_idempotency_key_at_once_through_both_replicas_make_one_task(
        agent_fleet: DirectFleet, fake_models: FakeModels, form_site: FormSite) -> None:
    fleet = agent_fleet
    fake_models.script(latency=2.0)
    key, n = f"at-once-{secrets.token_hex(4)}", 6
    params = {"instruction": INSTRUCTION, "model": PREVIEW, "start_url": form_site.form_url, "idempotency_key": key}
    clients = [fleet.client(replica=i % 2) for i in range(n)]
    together = threading.Barrier(n)

    def start(i: int) -> dict[str, Any]:
        together.wait()
        if i == n - 1:  # one through /agent/tasks/stream: its first event names the task
            stream = clients[i].agent.tasks.start_stream(**params)  # type: ignore[arg-type]
            first = dict(next(iter(stream)))  # type: ignore[call-overload]
            stream.close()
            return {"task_id": first["task_id"], "stream": True}
        return clients[i].agent.tasks.start(**params).to_dict()  # type: ignore[arg-type]

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(start, range(n)))
    tids = {a["task_id"] for a in answers}
    try:
        assert len(tids) == 1, answers
        made = [a for a in answers if not a.get("stream") and not a["reused"]]
        assert len(made) <= 1, answers  # the rest found the one task (the stream may be the one that made it)
        with fleet.http() as h:  # what the nodes hold: one task of the key, over both
            held = [t for t in h.get("/agent/tasks").json() if t.get("idempotency_key") == key]
        assert [t["task_id"] for t in held] == list(tids), held
        (tid,) = tids
        assert _key_rows(fleet, _org(fleet), key) == [[_held_by(fleet, tid)]]
    finally:
        for tid in tids:
            _cancel(fleet, tid)


def test_a_key_claimed_for_a_full_node_moves_to_the_node_that_starts_it(
        agent_fleet: DirectFleet, fake_models: FakeModels, form_site: FormSite) -> None:
    """The claim of a start whose node refused (429: nothing made) is the next node's, not stuck."""
    fleet = agent_fleet
    fake_models.script(latency=2.0)
    client = fleet.client()
    full, other = fleet.nodes[0].node_id, fleet.nodes[1].node_id
    filled: list[str] = []
    try:
        while len(filled) < 6:  # every slot of the first node taken (a task's computer may still be ending)
            try:
                filled.append(client.computers.create(kind="browser", extra_body={"node_hint": full}).id)
            except tzafon.RateLimitError:
                break
        assert filled and all(_recorded_on(fleet, cid) == full for cid in filled)
        org = _org(fleet)
        key = f"full-{secrets.token_hex(4)}"
        fleet.sql("INSERT INTO fleet_objects (id, kind, org_id, node_id, created_at) VALUES "
                  f"('{task_key_id(org, key)}', 'task_key', '{org}', '{full}', now())")  # as a start claims it
        task = fleet.client(replica=1).agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW,
                                                         start_url=form_site.form_url, idempotency_key=key)
        try:
            assert not task.reused and _held_by(fleet, task.task_id) == other
            assert _key_rows(fleet, org, key) == [[other]]
            again = fleet.client(replica=0).agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW,
                                                              start_url=form_site.form_url, idempotency_key=key)
            assert again.task_id == task.task_id and again.reused
        finally:
            _cancel(fleet, task.task_id)
    finally:
        for cid in filled:
            client.computers.delete(cid)


def test_a_task_from_a_saved_environment_on_a_full_node_moves_it_to_the_other(
        agent_fleet: DirectFleet, fake_models: FakeModels, form_site: FormSite) -> None:
    """A start with ``environment_id`` whose node is full: the environment moves to the node the task is
    placed on (as a create from it does, fleet/replica_storage.py), and the task's computer is made from it."""
    fleet = agent_fleet
    fake_models.script(latency=2.0)
    client = fleet.client()
    saved = client.computers.create(kind="browser", persistent=True)
    holder = _recorded_on(fleet, saved.id)
    other = next(n.node_id for n in fleet.nodes if n.node_id != holder)
    client.computers.delete(saved.id)
    with fleet.http() as h:
        assert wait_until(lambda: h.get(f"/environments/{saved.id}").status_code == 200, 60)
    filled: list[str] = []
    try:
        while len(filled) < 6:  # every slot of the holder taken
            try:
                filled.append(client.computers.create(kind="browser", extra_body={"node_hint": holder}).id)
            except tzafon.RateLimitError:
                break
        assert filled and all(_recorded_on(fleet, cid) == holder for cid in filled)
        task = fleet.client(replica=1).agent.tasks.start(instruction=INSTRUCTION, model=PREVIEW,
                                                         start_url=form_site.form_url, environment_id=saved.id)
        try:
            made = task.to_dict()["computer_id"]
            assert _held_by(fleet, task.task_id) == other
            assert wait_until(lambda: _recorded_on(fleet, made) == other, 10)
            assert _held_by(fleet, saved.id) == other  # the environment's one holder now
            with fleet.http(replica=0) as h:
                assert h.get(f"/computers/{made}").json()["environment_id"] == saved.id
        finally:
            _cancel(fleet, task.task_id)
    finally:
        for cid in filled:
            client.computers.delete(cid)


def test_responses_chain_across_replicas_and_stay_the_organisations(agent_fleet: DirectFleet,
                                                                      fake_models: FakeModels) -> None:
    fleet = agent_fleet
    a, b = _sdk(fleet, 0), _sdk(fleet, 1)
    node = min(fleet.nodes, key=lambda n: n.node_id)  # the one that lists (its start is the models' created)
    org = fleet.sql("SELECT org_id FROM api_keys LIMIT 1")[0][0]
    direct = httpx.get(node.url + PREFIX + "/v1/models", timeout=30,
                       headers={"authorization": f"Bearer {node_key(fleet.token, org)}", "x-opencone-org": org})
    assert {m.id for m in a.models.list()} == {m["id"] for m in direct.json()["data"]}
    with fleet.http(replica=1) as h:
        assert h.get("/models").json()["data"] == direct.json()["data"]  # the same, on either replica
        assert h.get(f"/v1/models/{EMULATED}").json()["id"] == EMULATED

    first = a.responses.create(model=EMULATED, input="remember the word heron")
    assert first.output_text == "echo: remember the word heron"
    assert wait_until(lambda: _held_by(fleet, first.id) is not None, 10)  # written beside the answer
    holder = _held_by(fleet, first.id)
    assert holder in {n.node_id for n in fleet.nodes}
    second = b.responses.create(model=EMULATED, input="which word?", previous_response_id=first.id)
    assert second.output_text == "echo: which word?"
    assert wait_until(lambda: _held_by(fleet, second.id) == holder, 10)
    sent = fake_models.requests(api="messages")[-1]["body"]["messages"]
    assert "heron" in str(sent)  # the chain was resolved on the node that holds it
    assert b.responses.retrieve(first.id).output_text == first.output_text
    assert [i.type for i in b.responses.input_items.list(second.id).data] == ["message"]
    with b.responses.stream(model=EMULATED, input="stream it", previous_response_id=second.id) as stream:
        kinds = [e.type for e in stream]
        third = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert wait_until(lambda: _held_by(fleet, third.id) == holder, 10)
    replayed = [e.type for e in a.responses.retrieve(third.id, stream=True)]  # its events again, through A
    assert replayed[0] == "response.created" and replayed[-1] == "response.completed"

    other = _sdk(fleet, 1, fleet.new_org_key("responses-b"))
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(first.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(first.id)
    with pytest.raises((openai.NotFoundError, openai.BadRequestError)):
        other.responses.create(model=EMULATED, input="steal", previous_response_id=first.id)
    a.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        b.responses.retrieve(first.id)


def test_screenshot_links_of_computers_on_either_node_reach_the_model(agent_fleet: DirectFleet,
                                                                       fake_models: FakeModels) -> None:
    fleet = agent_fleet
    client = fleet.client()
    computers = [client.computers.create(kind="browser", extra_body={"node_hint": n.node_id}).id
                 for n in fleet.nodes]
    try:
        urls = [fleet.client(replica=1).computers.screenshot(cid).result["screenshot_url"] for cid in computers]
        assert [u.split("/files/")[1].split(".")[0] for u in urls] == [n.node_id for n in fleet.nodes]
        jpegs = [httpx.get(u, timeout=30).content for u in urls]
        content: list[Any] = [{"type": "text", "text": "compare"}]
        content += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        reply = _sdk(fleet, 1).chat.completions.create(model=EMULATED, messages=[{"role": "user", "content": content}])
        assert reply.choices[0].message.content.startswith("echo: compare [images:")
        images = [p for p in fake_models.requests(api="messages")[-1]["body"]["messages"][0]["content"]
                  if p["type"] == "image"]
        # one link inlined by its own node, the other by the replica: the very bytes, both
        assert [base64.b64decode(p["source"]["data"]) for p in images] == jpegs
        # the same link with its slashes escaped, as some JSON encoders write it: still ours
        escaped = json.dumps({"model": EMULATED, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "escaped"}, {"type": "image_url", "image_url": {"url": urls[1]}}]}]})
        with fleet.http(replica=1) as h:
            answer = h.post("/v1/chat/completions", content=escaped.replace("/", "\\/"),
                            headers={"content-type": "application/json"})
        assert answer.status_code == 200, answer.text
        sent = fake_models.requests(api="messages")[-1]["body"]["messages"][0]["content"]
        assert [base64.b64decode(p["source"]["data"]) for p in sent if p["type"] == "image"] == [jpegs[1]]
        base = urls[0].rsplit("/", 1)[0]
        many = [{"type": "image_url", "image_url": {"url": urls[0]}}] + [
            {"type": "image_url", "image_url": {"url": f"{base}/{fleet.nodes[1].node_id}.{'B' * 31}{i:x}.jpg"}}
            for i in range(33)]
        with pytest.raises(openai.BadRequestError) as err:  # a bound on what the replica fetches for one request
            _sdk(fleet, 1).chat.completions.create(model=EMULATED, messages=[{"role": "user", "content": many}])
        assert "at most 32" in err.value.message
        dead = urls[0].rsplit("/", 1)[0] + "/" + fleet.nodes[0].node_id + "." + "A" * 32 + ".jpg"
        with pytest.raises(openai.BadRequestError) as err:  # a dead link of ours (this replica's origin)
            _sdk(fleet, 1).chat.completions.create(model=EMULATED, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": dead}}]}])
        assert "expired" in err.value.message
    finally:
        for cid in computers:
            client.computers.delete(cid)


def test_bad_input_is_a_4xx_that_says_why(agent_fleet: DirectFleet) -> None:
    fleet = agent_fleet
    with fleet.http(replica=1) as h:
        answers = {
            "not json": h.post("/agent/tasks", content=b"{nope", headers={"content-type": "application/json"}),
            "no instruction": h.post("/agent/tasks", json={"model": PREVIEW}),
            "a list": h.post("/agent/tasks/stream", json=[1, 2]),
            "too large": h.post("/agent/tasks", content=b'{"instruction": "' + b"x" * (2 << 20) + b'"}'),
            "bad status": h.get("/agent/tasks", params={"status": "exploded"}),
            "bad limit": h.get("/agent/tasks", params={"limit": 0}),
            "unknown task": h.get("/agent/tasks/task_doesnotexist"),
            "odd id": h.get("/agent/tasks/%2E%2E"),
            "unknown action": h.post("/agent/tasks/task_x/explode"),
            "unknown computer": h.post("/agent/tasks", json={"instruction": "x", "computer_id": "c_nope",
                                                            "on_missing_computer": "fail"}),
            "unknown model": h.post("/agent/tasks", json={"instruction": "x", "model": "no/such-model"}),
            "response not json": h.post("/v1/responses", content=b"[[[", headers={"content-type": "application/json"}),
            "chat without messages": h.post("/v1/chat/completions", json={"model": EMULATED}),
            "unknown response": h.get("/v1/responses/resp_doesnotexist"),
            "unknown previous": h.post("/v1/responses", json={"model": EMULATED, "input": "x",
                                                              "previous_response_id": "resp_doesnotexist"}),
            "unknown model id": h.get("/v1/models/no/such/.."),
        }
    for what, answer in answers.items():
        assert 400 <= answer.status_code < 500, (what, answer.status_code, answer.text)
        body = answer.json()
        said = body.get("detail") or body.get("error", {}).get("message")
        assert isinstance(said, str) and said, (what, body)
    assert answers["too large"].status_code == 413
    assert answers["no instruction"].status_code == 422 and "instruction" in answers["no instruction"].text
    assert "error" in answers["response not json"].json()  # OpenAI's shape on /v1
    assert answers["unknown response"].status_code == 404 and "error" in answers["unknown response"].json()


def test_an_object_whose_node_is_gone_is_a_503_not_a_404(agent_fleet: DirectFleet) -> None:
    """Last in the module: it stops a node. What it held is not copied elsewhere, so a request for it
    says its node is not ready (retry), not that it never existed."""
    fleet = agent_fleet
    made = _sdk(fleet, 0).responses.create(model=EMULATED, input="soon on a lost node")
    assert wait_until(lambda: _held_by(fleet, made.id) is not None, 10)
    node = next(n for n in fleet.nodes if n.node_id == _held_by(fleet, made.id))
    node.stop()
    fleet.sql(f"UPDATE nodes SET state = 'dead' WHERE id = '{node.node_id}'")  # the controller's verdict

    def unavailable(replica: int) -> bool:
        try:
            _sdk(fleet, replica).responses.retrieve(made.id)
        except openai.APIStatusError as exc:
            assert exc.status_code in (503, 404), exc  # 404 only while a replica's node list is a second old
            return exc.status_code == 503 and "not ready" in exc.message
        return False

    for replica in (0, 1):  # one remembers where it is, the other reads the table
        assert wait_until(lambda r=replica: unavailable(r), 10)
    with pytest.raises(openai.APIStatusError) as err:
        _sdk(fleet, 1).responses.create(model=EMULATED, input="more", previous_response_id=made.id)
    assert err.value.status_code == 503
    with fleet.http(replica=1) as h:  # what no node has is still a 404, from a node that is ready
        def never_made() -> bool:
            status = h.get("/v1/responses/resp_nevermade").status_code
            # a 503 only while the replica's list of ready nodes (NODES_TTL) may still hold the stopped
            # one, which any node's answer can be drawn from (CI saw one)
            assert status in (404, 503), status
            return status == 404

        assert wait_until(never_made, 10)


def test_a_key_claimed_for_a_lost_node_starts_a_new_task_on_a_ready_one(
        agent_fleet: DirectFleet, fake_models: FakeModels, form_site: FormSite) -> None:
    """After the test above (a node is dead), or alone (it stops one): a retry of a start whose task
    was lost with its node (``node_lost``) starts the task again on a ready node, and the key is its."""
    fleet = agent_fleet
    dead = fleet.sql("SELECT id FROM nodes WHERE state = 'dead'")
    if not dead:
        fleet.nodes[0].stop()
        fleet.sql(f"UPDATE nodes SET state = 'dead' WHERE id = '{fleet.nodes[0].node_id}'")
    lost = fleet.sql("SELECT id FROM nodes WHERE state = 'dead'")[0][0]
    ready = next(n.node_id for n in fleet.nodes if n.node_id != lost)
    fake_models.script(latency=2.0)
    org, key = _org(fleet), f"lost-{secrets.token_hex(4)}"
    fleet.sql("INSERT INTO fleet_objects (id, kind, org_id, node_id, created_at) VALUES "
              f"('{task_key_id(org, key)}', 'task_key', '{org}', '{lost}', now())")  # its start's claim
    params = {"instruction": INSTRUCTION, "model": PREVIEW, "start_url": form_site.form_url, "idempotency_key": key}
    task = fleet.client(replica=1).agent.tasks.start(**params)  # type: ignore[arg-type]
    try:
        assert not task.reused and _held_by(fleet, task.task_id) == ready
        assert _key_rows(fleet, org, key) == [[ready]]
        again = fleet.client(replica=0).agent.tasks.start(**params)  # type: ignore[arg-type]
        assert again.task_id == task.task_id and again.reused
    finally:
        _cancel(fleet, task.task_id)
