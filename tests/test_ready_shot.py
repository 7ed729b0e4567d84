"""The screen encoded ahead of the screenshot an agent takes after acting (drivers/desktop/readyshot.py).

Driver level, with a real Xvfb, the desktop's own Screen and X thread: another X
client paints a window, as an application answering input would. After input,
the looks encode the change once, and the screenshot then answers with that JPEG
without encoding again; a change made after the looks ended is grabbed afresh.
Through the API, a screenshot never shows an older screen than the one drawn.
"""

from __future__ import annotations

import asyncio
import base64

import simplejpeg
from conftest import PaintedWindow, Server, hide_all_windows
from Xlib.display import Display

from opencone.drivers.desktop.readyshot import LOOKS, ReadyShot
from opencone.drivers.desktop.screen import Screen
from opencone.drivers.desktop.xthread import XThread

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _colour(jpeg: bytes) -> tuple[int, ...]:
    pixels = simplejpeg.decode_jpeg(jpeg)
    return tuple(int(v) for v in pixels[10, 10])


def _near(got: tuple[int, ...], want: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(got, want, strict=True))


def test_looks_after_input_encode_the_change_once(x_display: str) -> None:
    async def scenario() -> None:
        thread = XThread("xtest")
        conn = Display(x_display)
        screen = await thread.run(Screen, conn, x_display)
        encodes = 0
        encode = screen._encode

        def counting(*args: object) -> bytes:
            nonlocal encodes
            encodes += 1
            return encode(*args)  # type: ignore[arg-type]

        screen._encode = counting  # type: ignore[method-assign]
        ready = ReadyShot(lambda q: thread.submit(screen.jpeg, q))
        painter = PaintedWindow(x_display)
        try:
            await thread.run(screen.jpeg, 80)  # the client's first screenshot: looks start after input
            ready.screenshot_taken(80)
            before = encodes
            painter.paint(RED)  # what the input made an application draw
            ready.after_input()
            await asyncio.sleep(LOOKS[-1] + 0.3)
            assert encodes == before + 1  # looked at six times, encoded once
            shot = await thread.run(screen.jpeg, 80)
            assert encodes == before + 1 and _near(_colour(shot), RED)  # the screenshot encodes nothing
            painter.paint(BLUE)  # drawn after the looks, with no input: grabbed afresh
            shot = await thread.run(screen.jpeg, 80)
            assert encodes == before + 2 and _near(_colour(shot), BLUE)
            ready.close()
            painter.paint(RED)
            ready.after_input()  # closed: no more looks
            await asyncio.sleep(LOOKS[1])
            assert encodes == before + 2
        finally:
            painter.d.close()
            await thread.run(screen.close)
            conn.close()
            thread.shutdown()

    asyncio.run(scenario())


def test_a_screenshot_after_input_shows_the_screen_as_drawn(server: Server) -> None:
    # The looks that follow input encode the screen ahead; whatever another program draws in
    # between, at any moment of those looks, the next screenshot shows it.
    client = server.client()
    with client.computer.create(kind="desktop") as comp:
        hide_all_windows(client, comp.id)
        c = client.computers
        assert c.screenshot(comp.id).status == "success"
        seen = []
        for i, (name, rgb) in enumerate([("#ff0000", RED), ("#0000ff", BLUE)] * 4):
            assert c.click(comp.id, x=5, y=5).status == "success"  # input: the looks begin
            sleep = f"sleep {0.01 * i:.2f}; " if i else ""
            ran = c.exec.sync(comp.id, command=f"{sleep}xsetroot -solid '{name}'")
            assert ran.exit_code == 0, ran.stderr
            shot = c.screenshot(comp.id, base64=True)
            assert shot.status == "success", shot.error_message
            data = base64.b64decode(shot.result["screenshot_url"].split(",", 1)[1])
            seen.append((rgb, _colour(data)))
    assert all(_near(got, want) for want, got in seen), seen
