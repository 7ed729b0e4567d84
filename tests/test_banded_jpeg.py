"""Screenshots re-encoded only where the screen was drawn on (drivers/desktop/stripjpeg.py).

A banded frame must decode to exactly the pixels of one whole encode of the same
screen, however the bands came to be: all at once, or some kept from earlier
frames. Checked on made-up frames, on a bare Xvfb that another X client draws
on, and through the API on a desktop whose browser redraws part of a page.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import mss
import numpy
import pytest
from conftest import PaintedWindow, Server, grabbed_pixels, jpeg_pixels, wait_until, whole_jpeg_pixels
from test_desktop import Desk
from Xlib.display import Display

from opencone.drivers.desktop import stripjpeg
from opencone.drivers.desktop.screen import Screen
from opencone.drivers.desktop.stripjpeg import BAND, BandedJpeg


def whole(frame: numpy.ndarray, quality: int = 80) -> numpy.ndarray:
    """What one encode of the whole frame decodes to."""
    return whole_jpeg_pixels(frame, quality)


def screen_like(w: int, h: int, rng: numpy.random.Generator) -> numpy.ndarray:
    frame = numpy.full((h, w, 4), 235, numpy.uint8)
    frame[h // 4: h // 2, w // 8: w // 2, :3] = rng.integers(0, 256, (h // 2 - h // 4, w // 2 - w // 8, 3))
    return frame


@pytest.fixture()
def band_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The height of every band encoded from now on, in order."""
    seen: list[int] = []
    encode = stripjpeg._whole

    def counting(pixels: numpy.ndarray, quality: int) -> bytes:
        seen.append(pixels.shape[0])
        return encode(pixels, quality)

    monkeypatch.setattr(stripjpeg, "_whole", counting)
    return seen


@pytest.mark.parametrize("size", [(1024, 768), (1001, 703), (640, BAND + 1), (17, 5)])
def test_banded_frames_decode_as_one_whole_encode(size: tuple[int, int]) -> None:
    w, h = size
    rng = numpy.random.default_rng(w * h)
    frame = screen_like(w, h, rng)
    frames = BandedJpeg()
    assert (jpeg_pixels(frames.encode(frame, 80)) == whole(frame)).all()
    for _ in range(12):  # changes anywhere, of any height, across band edges; each said exactly
        top, rows = int(rng.integers(0, h)), int(rng.integers(1, max(2, h // 3)))
        rows = min(rows, h - top)
        left = int(rng.integers(0, w))
        frame[top:top + rows, left:, :3] = rng.integers(0, 256, 3)
        assert (jpeg_pixels(frames.encode(frame, 80, [(top, rows)])) == whole(frame)).all(), (top, rows)
    # another quality, or an unknown change: every band again
    assert (jpeg_pixels(frames.encode(frame, 60, [])) == whole(frame, 60)).all()
    frame[:, : w // 2, :3] = 9
    assert (jpeg_pixels(frames.encode(frame, 60, None)) == whole(frame, 60)).all()


def test_only_the_bands_drawn_on_are_encoded_again(band_encodes: list[int]) -> None:
    rng = numpy.random.default_rng(7)
    frame = screen_like(1024, 768, rng)
    frames = BandedJpeg()
    frames.encode(frame, 80)
    assert len(band_encodes) == 768 // BAND
    band_encodes.clear()
    frame[5 * BAND + 3: 5 * BAND + 10, 100:200, :3] = (255, 0, 0)  # drawn in band 5 only
    frame[2 * BAND: 2 * BAND + 4, 100:200, :3] = (0, 0, 255)  # in band 2, but not said to be
    # the grab before it need fetch only the rows of the bands it will encode
    assert frames.rows_needed(1024, 768, 80, [(5 * BAND + 3, 7)]) == (5 * BAND, 6 * BAND)
    assert frames.rows_needed(1024, 768, 80, [(BAND - 1, 2), (9 * BAND, 1)]) == (0, 10 * BAND)
    assert frames.rows_needed(1024, 768, 81, [(5 * BAND + 3, 7)]) == (0, 768)  # another quality: all
    assert frames.rows_needed(1024, 768, 80, []) == (0, 0)
    shown = jpeg_pixels(frames.encode(frame, 80, [(5 * BAND + 3, 7)]))
    assert band_encodes == [BAND]
    stale = frame.copy()
    stale[2 * BAND: 3 * BAND] = screen_like(1024, 768, numpy.random.default_rng(7))[2 * BAND: 3 * BAND]
    assert (shown == whole(stale)).all()  # band 2 kept from the first frame, band 5 new
    band_encodes.clear()
    again = frames.encode(frame, 80, [])  # nothing drawn: nothing encoded, the same frame
    assert band_encodes == [] and jpeg_pixels(again).tobytes() == shown.tobytes()


def test_screenshots_of_a_screen_drawn_on_in_parts(x_display: str, band_encodes: list[int]) -> None:
    conn = Display(x_display)
    screen = Screen(conn, x_display)
    grabber = mss.MSS(display=x_display)

    def as_grabbed() -> numpy.ndarray:
        return grabbed_pixels(grabber, 400, 300, 80)

    background = PaintedWindow(x_display, 0, 0, 400, 300)
    small = PaintedWindow(x_display, 150, 100, 60, 40)
    try:
        background.paint((200, 200, 200))
        small.paint((255, 0, 0))
        assert (jpeg_pixels(screen.jpeg(80)) == as_grabbed()).all()
        bands = -(-300 // BAND)
        steps: list[Callable[[], Any]] = [
            lambda: small.paint((0, 0, 255)),
            lambda: small.move(300, 230),  # the old place is drawn again too (the background shows)
            lambda: small.move(10, 5),
            lambda: small.win.unmap(),
            lambda: background.paint((30, 120, 30)),
        ]
        for i, step in enumerate(steps):
            step()
            small.d.sync()
            band_encodes.clear()
            shot = screen.jpeg(80)
            assert (jpeg_pixels(shot) == as_grabbed()).all(), i
            assert len(band_encodes) <= (bands if i == len(steps) - 1 else 6), (i, band_encodes)
        assert len(band_encodes) == bands  # the whole screen was drawn on: every band
        band_encodes.clear()
        small.win.map()
        small.paint((255, 255, 0))
        assert (jpeg_pixels(screen.jpeg(80)) == as_grabbed()).all()
        assert 1 <= len(band_encodes) <= 3  # a 40-row window at y 5: bands 0 and 1
    finally:
        grabber.close()
        small.d.close()
        background.d.close()
        screen.close()
        conn.close()


@pytest.fixture(scope="module")
def desk(server: Server, site: str) -> Iterator[Desk]:
    client = server.client()
    comp = client.computers.create(kind="desktop")
    yield Desk(client, comp.id, site)
    client.computers.delete(comp.id)


def test_a_page_redrawn_in_part_is_shown_as_grabbed(desk: Desk) -> None:
    # Through the API, on a desktop's browser: after a click redraws part of the page, the
    # screenshot (bands kept from before, the redrawn ones new) shows the screen as this test
    # grabs it from the desktop's X server itself.
    c = desk.client.computers
    ran = c.exec.sync(desk.id, command="echo $DISPLAY")
    assert ran.exit_code == 0, ran.stderr
    display = ran.stdout.strip()
    grabber = mss.MSS(display=display)

    def shot() -> bytes:
        result = desk.ok(c.screenshot(desk.id, base64=True))
        return base64.b64decode(result.result["screenshot_url"].split(",", 1)[1])

    def as_grabbed() -> numpy.ndarray:
        return grabbed_pixels(grabber, 1280, 720, 80)  # a desktop's default screen

    settled: list[tuple[bytes, numpy.ndarray]] = []

    def redrawn_and_settled(before: numpy.ndarray) -> bool:
        # the browser has drawn the click (its frame comes a moment after the page's change), and
        # the same JPEG on both sides of the grab: nothing was drawn between them
        first, grabbed, second = shot(), as_grabbed(), shot()
        settled.append((first, grabbed))
        return first == second and bool((jpeg_pixels(first) != before).any())

    try:
        desk.open_playground()
        for clicks in range(3):
            before = jpeg_pixels(shot())
            desk.ok(c.click(desk.id, x=60 + 40 * clicks, y=desk.top + 70))  # the page's button
            assert wait_until(lambda n=clicks: desk.state()["clicks"] > n)  # type: ignore[misc]
            assert wait_until(lambda b=before: redrawn_and_settled(b), timeout=10, step=0.05)  # type: ignore[misc]
            jpeg, grabbed = settled[-1]
            assert (jpeg_pixels(jpeg) == grabbed).all()
    finally:
        grabber.close()
