"""A schemathesis run over a live server's OpenAPI document: the bounded one in
tests/test_openapi_fuzz.py and the long one in bench/fuzz_openapi.py.

Every operation gets ``examples`` generated requests per mode (valid data, and
data the document says is invalid), sent with the server's key to its live
computer, and every answer is checked: no 5xx, and a status, media type,
headers and body the document declares. Nothing stops at the first finding;
the report lists them all. Hypothesis runs with a fixed seed and without its
database or shrinking, so a run is the same run every time and its length is
its number of requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import hypothesis.errors
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from opencone.testing import Server

# the server a run is meant for: its own (the run makes, changes and deletes computers), with
# every wait short so that a generated request cannot hold the run up for long
SERVER_ENV = {"OPENCONE_POOL_SIZE": "1", "OPENCONE_MAX_COMPUTERS": "3", "OPENCONE_ACTION_TIMEOUT_SECONDS": "3",
              "OPENCONE_NAVIGATION_TIMEOUT_SECONDS": "3", "OPENCONE_ENVIRONMENT_SAVE_GRACE_SECONDS": "0.5",
              "OPENCONE_PROXY_CONNECT_TIMEOUT_SECONDS": "2"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
# never-ending streams (they last as long as the computer): their errors are tested by hand
STREAMS = ("GET /computers/{computer_id}/events", "GET /computers/{computer_id}/screencast")
# what one generated request may ask for, so the run's length is its number of requests
_CAPS = {"timeout_seconds": 2, "ms": 100, "settle_ms": 100, "max_lifetime_seconds": 30,
         "inactivity_timeout_seconds": 30}


@dataclass
class Finding:
    operation: str
    request: str
    status: int | None
    failure: str


@dataclass
class Report:
    cases: int = 0
    seconds: float = 0.0
    by_operation: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.cases} requests over {len(self.by_operation)} operations in {self.seconds:.1f} s; "
                 f"statuses {dict(sorted(self.statuses.items()))}; {len(self.findings)} findings"]
        seen: set[tuple[str, str]] = set()
        for f in self.findings:
            key = (f.operation, f.failure.splitlines()[0] if f.failure else "")
            if key not in seen:  # one line per kind of finding per operation
                seen.add(key)
                lines.append(f"- {f.operation} -> {f.status}: {f.failure[:600]}\n    {f.request[:400]}")
        return "\n".join(lines)


# operations that may make a Notte session (a computer) the run must not leave behind
_NOTTE_MAKERS = ("POST /session/start", "POST /sessions/start", "POST /env/observe", "POST /env/step",
                 "POST /env/scrape")


def _capped(value: Any) -> Any:
    """The body with every duration it asks for cut to a moment (negative cases stay negative or
    become valid, both of which the checks accept)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            cap = _CAPS.get(k)
            if cap is not None and isinstance(v, int | float) and not isinstance(v, bool) and v > cap:
                v = cap
            out[k] = _capped(v)
        return out
    if isinstance(value, list):
        return [_capped(v) for v in value]
    return value


def _describe(case: Any) -> str:
    body = getattr(case, "body", None)
    return f"{case.method} {case.formatted_path} query={case.query} body={body!r}"


def _failure_text(exc: BaseException) -> str:
    failures: Iterable[BaseException] = exc.exceptions if isinstance(exc, FailureGroup) else [exc]
    parts = []
    for f in failures:
        title = f.title if isinstance(f, Failure) else type(f).__name__
        message = f.message if isinstance(f, Failure) else str(f)
        parts.append(f"{title}: {message}")
    return "\n".join(parts)


def run(server: Server, computer_id: str, *, examples: int, seed: int, skip: Iterable[str] = STREAMS,
        timeout: float = 30.0) -> Report:
    """Fuzz every operation of ``server``'s document; ``computer_id`` is the live computer to use
    (never deleted: DELETE /computers/{id} gets generated ids, which are unknown)."""
    doc = httpx.get(f"{server.base_url}/openapi.json", timeout=timeout).json()
    # the key is sent with every request; negative cases break the request, not the key (401s are
    # tested by hand, and a run of them would spend its requests there)
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
    schema = schemathesis.openapi.from_dict(doc, config=config)
    report = Report()
    started = time.monotonic()
    skipped = set(skip)
    headers = {"authorization": f"Bearer {server.api_key}"}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if label in skipped:
            continue
        params = {}
        if "{computer_id}" in operation.path and label != "DELETE /computers/{computer_id}":
            params["computer_id"] = computer_id
        for mode in MODES:
            _run_operation(server, operation, label, mode, params, headers, examples, seed, timeout, report)
    report.seconds = time.monotonic() - started
    return report


def _run_operation(server: Server, operation: Any, label: str, mode: Any, params: dict[str, str],
                   headers: dict[str, str], examples: int, seed: int, timeout: float, report: Report) -> None:
    @hypothesis.seed(seed)
    @hypothesis.settings(max_examples=examples, database=None, deadline=None, derandomize=False,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                         print_blob=False)
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode, path_parameters=params or None))
    def one(case: Any) -> None:
        if isinstance(getattr(case, "body", None), dict | list):
            case.body = _capped(case.body)
        status = None
        try:
            response = case.call(base_url=server.base_url, headers=headers, timeout=timeout)
            status = response.status_code
            report.statuses[status] = report.statuses.get(status, 0) + 1
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (Failure, FailureGroup, OSError) as exc:
            report.findings.append(Finding(label, _describe(case), status, _failure_text(exc)))
        except Exception as exc:  # a transport error: the server hung up or did not answer
            report.findings.append(Finding(label, _describe(case), status, f"{type(exc).__name__}: {exc}"))
        finally:
            report.cases += 1
            report.by_operation[label] = report.by_operation.get(label, 0) + 1
        if label == "POST /computers" and status == 200:  # a computer it made: gone at once
            created = response.json().get("id")
            if created:
                httpx.delete(f"{server.base_url}/computers/{created}", headers=headers, timeout=timeout)
        if label == "POST /openenv/reset" and status == 200:  # an OpenEnv episode is a computer too
            episode = response.json().get("observation", {}).get("episode_id")
            if episode:
                httpx.post(f"{server.base_url}/openenv/close", json={"episode_id": episode}, headers=headers,
                           timeout=timeout)
        if label in _NOTTE_MAKERS and status == 200:  # a Notte session is a computer too (api/notte_sessions.py)
            body = response.json()
            made = body.get("session_id") or (body.get("session") or {}).get("session_id")
            if made and made != params.get("computer_id"):
                httpx.delete(f"{server.base_url}/computers/{made}", headers=headers, timeout=timeout)

    try:
        one()
    except hypothesis.errors.Unsatisfiable:  # negative mode of an operation with nothing to get wrong
        pass
