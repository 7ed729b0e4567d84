"""Screenshot URLs: capability links fetched without auth, served from memory while the
file is written, from disk after it, across a restart, and gone once they expire."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from conftest import jpeg_size, start_server


def test_a_screenshot_url_lives_through_its_write_and_a_restart_then_expires(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"OPENCONE_FILE_TTL_SECONDS": "60"}
    srv = start_server(tmp_path / "s1", data_dir=data, env=env)
    try:
        client = srv.client()
        comp = client.computers.create(kind="browser")
        url = client.computers.screenshot(comp.id).result["screenshot_url"]
        first = httpx.get(url)  # no Authorization header: the URL is the credential
        assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
        assert jpeg_size(first.content) == (1024, 768)
        token = url.rsplit("/", 1)[1]
        deadline = time.monotonic() + 5
        while not (data / "files" / token).is_file():  # written in the background
            assert time.monotonic() < deadline, "the screenshot was never written to disk"
            time.sleep(0.05)
        assert httpx.get(url).content == first.content
        client.computers.delete(comp.id)
    finally:
        srv.stop()

    srv = start_server(tmp_path / "s2", data_dir=data, env=env, api_key=srv.api_key)
    try:
        again = httpx.get(f"{srv.base_url}/files/{token}")
        assert again.status_code == 200 and again.content == first.content
        # a file's age is its mtime (so expiry survives restarts): age it past the 60 s TTL
        old = time.time() - 61
        os.utime(data / "files" / token, (old, old))
        gone = httpx.get(f"{srv.base_url}/files/{token}")
        assert gone.status_code == 404 and "expired" in gone.json()["detail"]
        assert httpx.get(f"{srv.base_url}/files/..%2Fserver.log").status_code == 404
    finally:
        srv.stop()
