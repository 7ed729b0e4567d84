"""Shared fixtures: a local web site, and real opencone servers as processes.

Every test drives a real server (``python -m opencone serve``, started by
``opencone.testing.start_server``) with real Chromium through the official
``tzafon`` SDK or httpx; pages come from a web server these fixtures start on
127.0.0.1, so nothing reaches the internet.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mss
import numpy
import pytest
import simplejpeg
from tzafon import Lightcone
from Xlib.display import Display

from opencone.testing import Server, Site, free_port, start_server

__all__ = ["PaintedWindow", "Server", "free_port", "grabbed_pixels", "jpeg_pixels", "jpeg_size", "page_state",
           "start_server", "wait_until", "whole_jpeg_pixels"]

PAGES = Path(__file__).with_name("pages")

# fake model providers and the recording form site, for the agent and gateway tests (tests/fake_models),
# and a throwaway PostgreSQL server (tests/postgres.py: fixtures `postgres`, `postgres_url`)
pytest_plugins = ["fake_models.fixtures", "postgres"]


@pytest.fixture()
def x_display() -> Iterator[str]:
    """A bare Xvfb (400x300) for driver-level tests of the desktop's X code; its DISPLAY name."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "400x300x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as numbers:
            yield f":{numbers.readline().strip()}"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def site() -> Iterator[str]:
    """Base URL of the test pages (tests/pages), served on 127.0.0.1."""
    pages = Site(PAGES)
    yield pages.url
    pages.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared server for the tests that do not change server settings."""
    srv = start_server(tmp_path_factory.mktemp("server"), env={"OPENCONE_POOL_SIZE": "2"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def cid(server: Server) -> Iterator[str]:
    """A browser computer shared by one test module."""
    client = server.client()
    comp = client.computers.create()
    yield comp.id
    client.computers.delete(comp.id)


@pytest.fixture
def client(server: Server) -> Lightcone:
    return server.client()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def hide_all_windows(client: Any, computer_id: str) -> None:
    """Unmap every window of a desktop, so nothing on it draws by itself (a blinking caret, a page)."""
    unmap = "for w in $(xdotool search --onlyvisible --name '.*'); do xdotool windowunmap $w; done"
    assert client.computers.exec.sync(computer_id, command=f"{{ {unmap}; }} 2>/dev/null; true").exit_code == 0


def desktop_home(server: Server, workdir: Path) -> Path:
    """On the host, the home of the desktop whose run directory is ``workdir`` (its terminal's
    /home/user): beside its workspace, in the server's workspace root."""
    from opencone.drivers.sandbox import Workspaces

    return Workspaces(Path(server.run_dir)).home(workdir.name)


STATE = re.compile(r"STATE(\{.*?\})END", re.S)


def page_state(html: str) -> dict[str, Any]:
    """The playground page's event log, read back from its HTML."""
    match = STATE.search(html)
    assert match, "playground state not found in the page HTML"
    return json.loads(match.group(1))


class PaintedWindow:
    """A window of another X client (no window manager's), repainted in a colour: what an
    application draws. Covers the whole screen unless given a place and a size."""

    def __init__(self, name: str, x: int = 0, y: int = 0, w: int = 0, h: int = 0) -> None:
        self.d = Display(name)
        screen = self.d.screen()
        self.win = screen.root.create_window(x, y, w or screen.width_in_pixels, h or screen.height_in_pixels, 0,
                                             screen.root_depth, override_redirect=True, background_pixel=0)
        self.win.map()
        self.d.sync()

    def paint(self, rgb: tuple[int, int, int]) -> None:
        self.win.change_attributes(background_pixel=(rgb[0] << 16) | (rgb[1] << 8) | rgb[2])
        self.win.clear_area(0, 0, 0, 0)
        self.d.sync()

    def move(self, x: int, y: int) -> None:
        self.win.configure(x=x, y=y)
        self.d.sync()


def jpeg_pixels(data: bytes) -> numpy.ndarray:
    """A JPEG decoded: (h, w, 3) RGB."""
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def whole_jpeg_pixels(frame: numpy.ndarray, quality: int) -> numpy.ndarray:
    """A BGRA frame encoded whole, as the server encodes (4:2:0, fast DCT), and decoded."""
    return jpeg_pixels(simplejpeg.encode_jpeg(frame, quality=quality, colorspace="BGRA",
                                              colorsubsampling="420", fastdct=True))


def grabbed_pixels(grabber: mss.MSS, w: int, h: int, quality: int) -> numpy.ndarray:
    """An X screen as this test grabs it, encoded whole and decoded: what the server's JPEG of
    the same screen must decode to."""
    raw = grabber.grab({"left": 0, "top": 0, "width": w, "height": h}).raw
    return whole_jpeg_pixels(numpy.frombuffer(raw, numpy.uint8).reshape(h, w, 4).copy(), quality)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from a JPEG's SOF marker."""
    i = 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return w, h
        i += 2 + length
    raise AssertionError("no SOF marker")
