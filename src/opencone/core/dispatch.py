"""Run one canonical action on a driver.

This is the only place that knows both the canonical action model and the
driver interface; a new action is added here once, for every driver. An action
on an element (a ref from a snapshot) is checked against the computer's
snapshots first (core/perception.py), then done by the driver on the element.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from opencone.core import actions as a
from opencone.core import markdown, perception
from opencone.drivers.base import CommandResult, ComputerDriver, Display, DriverError, PageContext, UploadSource

CommandRunner = Callable[[a.RunCommand], Awaitable[CommandResult]]
# a file of the computer's (dir, path), opened for upload_file by core/computer_files.py
FileOpener = Callable[[str | None, str], AbstractAsyncContextManager[UploadSource]]


@dataclass(slots=True)
class Outcome:
    """What an action produced, before it is put on the wire."""

    result: dict[str, Any] = field(default_factory=dict)
    image: bytes | None = None  # a screenshot; the edge turns it into a URL
    image_base64: bool = False


@dataclass(slots=True)
class Limits:
    navigation_timeout: float
    screenshot_quality: int


def _inside(p: a.Point, display: Display) -> None:
    if p.x >= display.pixel_width or p.y >= display.pixel_height:
        raise DriverError(
            f"point ({p.x:g}, {p.y:g}) is outside the screen; x must be below {display.pixel_width} "
            f"and y below {display.pixel_height} (screenshot pixels)"
        )


def _points(action: a.Action) -> list[a.Point]:
    match action:
        case (a.Click(at=p) | a.MoveMouse(at=p) | a.MouseDown(at=p) | a.MouseUp(at=p) | a.TypeText(at=p)
              | a.Scroll(at=p) | a.UploadFile(at=p)):
            return [p] if p else []
        case a.Drag(path=path):
            return list(path)
    return []


async def _element(driver: ComputerDriver, element: a.Element, tab: str | None) -> Any:
    """What the driver gets for an element: its ref checked against the tab's snapshots."""
    return await perception.target(driver, element, tab)


async def perform(driver: ComputerDriver, action: a.Action, tab: str | None, limits: Limits,
                  run_command: CommandRunner | None = None, open_file: FileOpener | None = None) -> Outcome:
    """``run_command`` runs a shell command in the computer's sandbox, ``open_file`` opens one of
    its files (the services supply both)."""
    for point in _points(action):
        _inside(point, driver.display)
    match action:
        case a.Click(element=el, button=button, count=count) if el is not None:
            await driver.element_click(await _element(driver, el, tab), button, count, tab)  # type: ignore[attr-defined]
        case a.Click(at=p, button=button, count=count) if p is not None:
            await driver.click(p.x, p.y, button, count, tab)
        case a.MoveMouse(element=el) if el is not None:
            await driver.element_pointer("move", await _element(driver, el, tab), "left", tab)  # type: ignore[attr-defined]
        case a.MoveMouse(at=p) if p is not None:
            await driver.move(p.x, p.y, tab)
        case a.MouseDown(element=el, button=button) if el is not None:
            await driver.element_pointer("down", await _element(driver, el, tab), button, tab)  # type: ignore[attr-defined]
        case a.MouseUp(element=el, button=button) if el is not None:
            await driver.element_pointer("up", await _element(driver, el, tab), button, tab)  # type: ignore[attr-defined]
        case a.MouseDown(at=p, button=button):
            await driver.mouse_down(p.x if p else None, p.y if p else None, button, tab)
        case a.MouseUp(at=p, button=button):
            await driver.mouse_up(p.x if p else None, p.y if p else None, button, tab)
        case a.Drag(element=src, to_element=dst) if src is not None and dst is not None:
            await driver.element_drag(await _element(driver, src, tab),  # type: ignore[attr-defined]
                                      await _element(driver, dst, tab), tab)
        case a.Drag(path=path, button=button):
            await driver.drag([(p.x, p.y) for p in path], button, tab)
        case a.TypeText(text=text, element=el) if el is not None:
            await driver.element_type(await _element(driver, el, tab), text, tab)  # type: ignore[attr-defined]
        case a.TypeText(text=text, at=p):
            if p:
                await driver.click(p.x, p.y, "left", 1, tab)
            await driver.type_text(text, tab)
        case a.Fill(element=el, text=text):
            await driver.element_fill(await _element(driver, el, tab), text, tab)  # type: ignore[attr-defined]
        case a.SelectOption(element=el, values=values):
            chosen = await driver.element_select(await _element(driver, el, tab), values, tab)  # type: ignore[attr-defined]
            return Outcome({"selected": chosen})
        case a.UploadFile(path=path, dir=where, at=p, element=el):
            set_files = getattr(driver, "set_input_files", None)
            if set_files is None or open_file is None:
                raise DriverError(f"upload_file is not available on a {driver.kind} computer")
            target = await _element(driver, el, tab) if el is not None else None
            async with open_file(where, path) as source:
                await set_files(target, (p.x, p.y) if p is not None else None, source, tab)
            return Outcome({"name": source.name, "path": path, "size": source.size})
        case a.PressKeys(keys=keys):
            await driver.press_keys(keys, tab)
        case a.KeyDown(key=key):
            await driver.key_down(key, tab)
        case a.KeyUp(key=key):
            await driver.key_up(key, tab)
        case a.Scroll(element=el, dx=dx, dy=dy) if el is not None:
            await driver.element_scroll(await _element(driver, el, tab), dx, dy, tab)  # type: ignore[attr-defined]
        case a.Scroll(at=p, dx=dx, dy=dy):
            d = driver.display
            x, y = (p.x, p.y) if p else (d.pixel_width / 2, d.pixel_height / 2)
            await driver.scroll(x, y, dx, dy, tab)
        case a.Wait(ms=ms):
            await asyncio.sleep(ms / 1000)
        case a.Screenshot(base64=b64):
            image = await driver.screenshot(limits.screenshot_quality, tab)
            return Outcome(image=image, image_base64=b64)
        case a.Navigate(url=url):
            await driver.navigate(url, limits.navigation_timeout, tab)
        case a.GetHtml():
            return Outcome({"html_content": await driver.html(tab)})
        case a.Snapshot():
            return Outcome(perception.render(await perception.take(driver, tab), action))
        case a.Markdown():
            return Outcome(await markdown.page_markdown(perception.perceiving(driver), tab, action))
        case a.Evaluate(expression=expression, max_chars=max_chars):
            evaluate = getattr(driver, "page_evaluate", None)  # browsers (drivers/chromium/perception.py)
            if evaluate is None:
                raise DriverError(f"evaluate runs JavaScript in a browser's page; a {driver.kind} computer has none")
            return Outcome(await evaluate(expression, max_chars, tab))
        case a.History(op=op):
            await perception.perceiving(driver).history(op, limits.navigation_timeout, tab)
        case a.SetViewport(width=w, height=h, scale_factor=s):
            await driver.set_viewport(Display(w, h, s))
            return Outcome({"width": w, "height": h, "scale_factor": s})
        case a.ListTabs():
            tabs = await driver.list_tabs()
            return Outcome({"tabs": [_tab(t) for t in tabs]})
        case a.NewTab(url=url):
            info = await driver.new_tab(url, limits.navigation_timeout)
            return Outcome({"tab_id": info.tab_id, "tab": _tab(info)})
        case a.SwitchTab(tab_id=tab_id):
            info = await driver.switch_tab(tab_id)
            return Outcome({"tab_id": info.tab_id, "tab": _tab(info)})
        case a.CloseTab(tab_id=tab_id):
            await driver.close_tab(tab_id)
            return Outcome({"tab_id": tab_id, "closed": True})
        case a.RunCommand():
            if run_command is None:
                raise DriverError("shell commands are not available on this server")
            return _command_outcome(action, await run_command(action))
        case a.ChangeProxy(proxy_url=url):
            change = getattr(driver, "change_proxy", None)  # browser computers with a forwarder (drivers/proxy)
            if change is None:
                raise DriverError("this computer has no proxy to change")
            return Outcome({"proxy": await change(url)})
    return Outcome()


def _command_outcome(action: a.RunCommand, res: CommandResult) -> Outcome:
    """A non-zero exit is still a success (the code is in the result); a timeout is an error."""
    output = str(res.extra.get("output", res.stdout + res.stderr))
    if res.timed_out:
        tail = f"; output so far: {output[-2000:]}" if output else ""
        raise DriverError(f"the command timed out after {action.timeout_seconds:g} s and was killed{tail}")
    return Outcome({"debug_response": output, "stdout": res.stdout, "stderr": res.stderr,
                    "exit_code": res.exit_code, "truncated": res.truncated})


def _tab(t: Any) -> dict[str, Any]:
    return {"tab_id": t.tab_id, "id": t.tab_id, "url": t.url, "title": t.title,
            "is_main_tab": t.is_main, "is_main": t.is_main}


def page_context_dict(ctx: PageContext | None) -> dict[str, Any] | None:
    if ctx is None:
        return None
    return {
        "url": ctx.url, "title": ctx.title, "tab_id": ctx.tab_id, "is_main_tab": ctx.is_main_tab,
        "viewport_width": ctx.viewport_width, "viewport_height": ctx.viewport_height,
        "page_width": ctx.page_width, "page_height": ctx.page_height,
        "scroll_x": ctx.scroll_x, "scroll_y": ctx.scroll_y, "device_scale_factor": ctx.device_scale_factor,
    }
