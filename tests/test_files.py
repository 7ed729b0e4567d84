"""Screenshot URLs: capability links fetched without auth, served from memory while the
file is written, from disk after it, across a restart, and gone once they expire."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from conftest import hide_all_windows, jpeg_size, start_server, wait_until


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


def test_the_same_screen_again_is_the_same_file_renewed(tmp_path: Path) -> None:
    # A desktop hands out its last JPEG again while nothing was drawn: that is one file on disk
    # and one URL, whose expiry each new screenshot renews; a change makes a new one.
    data = tmp_path / "data"
    srv = start_server(tmp_path / "s", data_dir=data, env={"OPENCONE_FILE_TTL_SECONDS": "60"})
    try:
        client = srv.client()
        with client.computer.create(kind="desktop") as comp:
            hide_all_windows(client, comp.id)
            first = client.computers.screenshot(comp.id).result["screenshot_url"]
            token = first.rsplit("/", 1)[1]
            assert wait_until((data / "files" / token).is_file, 5), "the screenshot was never written to disk"
            old = time.time() - 50  # 10 s from expiry
            os.utime(data / "files" / token, (old, old))
            again = client.computers.screenshot(comp.id).result["screenshot_url"]
            assert again == first
            assert time.time() - (data / "files" / token).stat().st_mtime < 5, "its expiry was not renewed"
            assert httpx.get(again).status_code == 200
            assert client.computers.exec.sync(comp.id, command="xsetroot -solid '#123456'").exit_code == 0
            changed = client.computers.screenshot(comp.id).result["screenshot_url"]
            assert changed != first
            assert httpx.get(changed).content != httpx.get(first).content
        written = (data / "files" / changed.rsplit("/", 1)[1]).is_file
        assert wait_until(written, 5), "the second screenshot was never written to disk"
        assert len(list((data / "files").glob("*.jpg"))) == 2
    finally:
        srv.stop()
