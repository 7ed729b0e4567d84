"""The same API tests, on a server whose store is PostgreSQL (OPENCONE_DATABASE_URL=postgresql+asyncpg://...)
in local mode: a representative set taken from the SQLite suite and run here unchanged, each server on a
fresh database of a throwaway PostgreSQL (tests/postgres.py).

Covered: the lifecycle and its records (the write-behind batch of creates), keys and auth (the CLI writing
keys the server's key cache then drops), organisations, events, a saved environment restored, agent tasks
(idempotency keys: a unique constraint), the responses store; and PostgreSQL stopped under a live server.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from conftest import wait_until
from postgres import PostgresServer

import opencone.testing
from opencone.testing import Server, start_server

# -- the tests, borrowed: pytest collects them here, where `server` and the servers below are PostgreSQL's. A
# name gone from its module (renamed) is a failing test here, not an import error that stops the whole run.
BORROWED = {
    "test_lifecycle": ["test_create_fills_every_field", "test_list_is_a_bare_array_of_live_computers",
                       "test_deleted_computer_stays_retrievable_as_terminated", "test_keepalive_resets_the_idle_timer",
                       "test_missing_or_wrong_key_is_401_with_json",
                       "test_organisations_do_not_see_each_others_computers", "test_keys_cli_lists_and_revokes"],
    "test_events": ["comp_id", "test_actions_exec_and_the_end_arrive_in_order",
                    "test_replay_from_a_seq_and_after_last_event_id",
                    "test_auth_token_other_organisations_and_ended_computers"],
    # (not the restart and kill mid-save: about a minute, the most of this module's budget)
    "test_environments": ["test_browser_login_survives_the_end_of_a_persistent_computer"],
    "test_agent_tasks": ["tasks_server", "test_a_retried_start_is_the_same_task",
                         "test_no_model_request_while_paused_and_resume_finishes"],
    "test_gateway_responses": ["models_file", "gw", "test_native_create_retrieve_items_chain_delete",
                               "test_emulated_create_retrieve_items_delete", "test_background_runs_and_cancel_cancels"],
}


def _borrow(module_name: str, names: list[str]) -> None:
    module = importlib.import_module(module_name)
    for name in names:
        found = getattr(module, name, None)
        if found is None:
            def gone(module_name: str = module_name, name: str = name) -> None:
                pytest.fail(f"{module_name}.{name} is gone: update BORROWED in tests/test_postgres_api.py")
            found = gone
            name = f"test_borrowed_{name}"
        globals()[name] = found


for _module, _names in BORROWED.items():
    _borrow(_module, _names)


@pytest.fixture(scope="module", autouse=True)
def databases(postgres: PostgresServer) -> Iterator[dict[Path, str]]:
    """Every server this module starts gets a PostgreSQL database of its own, kept per data dir."""
    by_dir: dict[Path, str] = {}

    def factory(data_dir: Path) -> str:
        if data_dir not in by_dir:
            by_dir[data_dir] = postgres.create_database("api")
        return by_dir[data_dir]

    opencone.testing.database_factory = factory
    try:
        yield by_dir
    finally:
        opencone.testing.database_factory = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, databases: dict[Path, str]) -> Iterator[Server]:
    """This module's `server`, on PostgreSQL. The key CLI the tests run (`opencone keys --data-dir`) inherits
    this process's environment, so it is pointed at the same database while the module runs."""
    assert opencone.testing.database_factory is not None
    tmp = tmp_path_factory.mktemp("pg-server")
    data_dir = (tmp / "data").resolve()
    url = opencone.testing.database_factory(data_dir)
    before = os.environ.get("OPENCONE_DATABASE_URL")
    os.environ["OPENCONE_DATABASE_URL"] = url
    srv = start_server(tmp, data_dir=data_dir, env={"OPENCONE_POOL_SIZE": "2"})
    try:
        yield srv
    finally:
        srv.stop()
        if before is None:
            os.environ.pop("OPENCONE_DATABASE_URL", None)
        else:
            os.environ["OPENCONE_DATABASE_URL"] = before


def test_the_records_are_in_postgresql(server: Server, databases: dict[Path, str]) -> None:
    """Not a SQLite file beside a PostgreSQL URL: the computers' records are rows of this server's database,
    three created at once (their inserts batched into one transaction) and ended."""
    client = server.client()
    with ThreadPoolExecutor(3) as pool:
        ids = sorted(pool.map(lambda _: client.computers.create().id, range(3)))
    for cid in ids:
        client.computers.delete(cid)
    assert not (server.data_dir / "opencone.db").exists()

    async def read() -> tuple[list[str], int]:
        conn = await asyncpg.connect(databases[server.data_dir.resolve()].replace("postgresql+asyncpg", "postgresql"))
        try:
            rows = await conn.fetch("SELECT status FROM computers WHERE id = ANY($1::text[]) ORDER BY id", ids)
            keys = await conn.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
            return [r["status"] for r in rows], int(keys)
        finally:
            await conn.close()

    # (a delete's teardown finishes in the background, then the row is written)
    assert wait_until(lambda: asyncio.run(read())[0] == ["terminated"] * 3, timeout=30), asyncio.run(read())
    assert asyncio.run(read())[1] >= 1  # the bootstrap key


def test_postgresql_down_is_a_503_and_live_computers_keep_working(tmp_path: Path) -> None:
    pg = PostgresServer()  # its own: this test stops it
    srv = None
    try:
        srv = start_server(tmp_path, env={"OPENCONE_DATABASE_URL": pg.create_database(), "OPENCONE_POOL_SIZE": "1"})
        http = srv.http()
        cid = http.post("/computers", json={}).json()["id"]
        pg.stop()
        for answer in (http.post("/computers", json={}), srv.http("oc_a-key-not-cached-yet").get("/computers")):
            assert answer.status_code == 503, answer.text
            assert "database" in answer.json()["detail"] and "unavailable" in answer.json()["detail"]
        # what needs no new record goes on: actions on a live computer, with the key already checked
        assert http.post(f"/computers/{cid}/click", json={"x": 5, "y": 5}).json()["status"] == "success"
        assert http.post(f"/computers/{cid}/screenshot", json={}).json()["status"] == "success"
        pg.start()
        assert wait_until(lambda: http.post("/computers", json={}).status_code == 200, timeout=30)
    finally:
        if srv is not None:
            srv.stop()
        pg.close()
