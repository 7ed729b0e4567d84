"""The OpenAPI document tells the truth, and a schemathesis run holds the server to it.

The run (opencone/fuzz.py) sends a few hundred generated requests, valid and invalid, with a
fixed seed, to a server of its own (it makes, changes and deletes computers) and its live
computer, and checks every answer: no 5xx; a status, media type, headers and body that the
document declares. bench/fuzz_openapi.py runs the same for longer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Server, start_server

from opencone import fuzz
from opencone.api.routes.notte_seed import PATHS as NOTTE_SEED_PATHS
from opencone.api.wire.openai import PATHS as GATEWAY_PATHS

EXAMPLES = 5  # per operation and mode: about 600 requests in all
SEED = 20261


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("fuzz"), env=fuzz.SERVER_ENV)
    yield srv
    srv.stop()


def test_every_answer_is_what_the_document_says(fuzz_server: Server) -> None:
    cid = fuzz_server.client().computers.create().id
    report = fuzz.run(fuzz_server, cid, examples=EXAMPLES, seed=SEED)
    print(report.summary())
    assert not report.findings, report.summary()
    assert not [s for s in report.statuses if s >= 500]
    # a bound on the run's size (the suite's budget), never on its wall clock: a loaded CI is slow
    assert 200 <= report.cases <= 1500, report.summary()
    # it reached the live computer and the validation alike
    assert report.statuses.get(200, 0) > 50 and report.statuses.get(422, 0) > 50, report.summary()
    assert fuzz_server.client().computers.retrieve(cid).status != "terminated"


def _doc(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()  # type: ignore[no-any-return]


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield f"{method.upper()} {path}", op


def test_errors_are_problems_in_the_document(server: Server) -> None:
    doc = _doc(server)
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail", "error_message"}
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    openai_error = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}  # the gateway's
    gateway = 0
    for label, op in _operations(doc):
        ours = re.match(GATEWAY_PATHS, label.split(" ", 1)[1]) is not None
        gateway += ours
        for status, response in op["responses"].items():
            if status[0] in "45":
                assert response["content"] == (openai_error if ours else problem), label
    assert gateway == 11  # /v1/models (and /models), one model, chat (two spellings), six of responses


def test_each_operation_lists_the_errors_it_can_give(server: Server) -> None:
    doc = _doc(server)
    for label, op in _operations(doc):
        statuses = set(op["responses"])
        if label in ("GET /health",):
            assert statuses == {"200"}
            continue
        if label == "GET /files/{token}":
            assert statuses == {"200", "404"}  # no key: the token is the credential
            continue
        assert "401" in statuses and op["security"][0] == {"bearer": []}, label
        if label == "POST /computers/{computer_id}/exec":
            assert statuses == {"200", "401"}  # the stream says every other error in a line
            continue
        if "{computer_id}" in label or "{environment_id}" in label:
            assert "404" in statuses, label
        if "requestBody" in op:  # (the seed-era Notte API says bad input as a 400, as it did)
            bad = "400" if re.match(NOTTE_SEED_PATHS, label.split(" ", 1)[1]) else "422"
            assert {"413", bad} <= statuses, label
    assert "429" in doc["paths"]["/computers"]["post"]["responses"]
    assert "409" in doc["paths"]["/computers/{computer_id}/click"]["post"]["responses"]
    assert doc["paths"]["/computers/{computer_id}/events"]["get"]["security"] == [{"bearer": []}, {"token": []}]


def test_files_are_jpeg_in_the_document_and_on_the_wire(server: Server, cid: str) -> None:
    doc = _doc(server)
    ok = doc["paths"]["/files/{token}"]["get"]["responses"]["200"]
    assert list(ok["content"]) == ["image/jpeg"]
    url = server.client().computers.screenshot(cid).result["screenshot_url"]
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
