"""Every action endpoint, ``/execute`` and ``/batch``.

Each route only translates its body into canonical actions and renders the
reports; running them is the services' job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from fastapi import APIRouter, Depends, Request

from opencone.api.auth import current_org
from opencone.api.deps import base_url, runtime
from opencone.api.errors import problems
from opencone.api.json_body import JsonBody
from opencone.api.wire import actions as w
from opencone.core import actions as a
from opencone.core.computers import Step
from opencone.core.errors import InvalidInput

# every action runs on a live computer of the key's organisation and takes a body (api/guard.py checks it)
router = APIRouter(tags=["actions"], responses={200: {"model": w.ActionResult}, **problems(401, 404, 409, 413, 422)})


async def _run(request: Request, org: str, computer_id: str, actions: list[a.Action],
               body: w._Body) -> JsonBody:
    rt = runtime(request)
    step = Step(actions, body.tab_id, body.include_context)
    reports = await rt.computers.perform(org, computer_id, [step], request_id=body.request_id,
                                         render=w.renderer(rt.files, base_url(request)))
    return JsonBody(w.action_result(reports[-1], rt.files, base_url(request)))


def _pt(b: w.PointBody) -> dict[str, float]:
    if b.x is None or b.y is None:  # (a ref instead: this action takes a point only)
        raise InvalidInput("body: x and y required for this action (it takes no ref)", field="body")
    return {"x": b.x, "y": b.y}


def _target(b: w.PointBody) -> dict[str, Any]:
    """The click's target: the point, or the element ``ref`` (core/perception.py)."""
    if b.ref is not None:
        return {"element": w.element(b.ref, b.snapshot_id)}
    return {"at": {"x": b.x, "y": b.y}}


def _drag(b: w.DragBody) -> a.Action:
    if b.ref is not None or b.to_ref is not None:
        if b.ref is None or b.to_ref is None:
            raise InvalidInput("body: a drag by element needs both ref and to_ref", field="body")
        return w.build("body", {"kind": "drag", "element": w.element(b.ref, b.snapshot_id),
                                "to_element": w.element(b.to_ref, b.snapshot_id)})
    return w.build("body", {"kind": "drag", "path": [{"x": b.x1, "y": b.y1}, {"x": b.x2, "y": b.y2}]})


def _scroll(b: w.ScrollBody) -> a.Action:
    at = None if b.x is None or b.y is None or b.ref is not None else {"x": b.x, "y": b.y}
    return w.build("body", {"kind": "scroll", "at": at, "element": w.element(b.ref, b.snapshot_id),
                            "dx": b.dx, "dy": b.dy})


class HotRoute(NamedTuple):
    body: type[w._Body]  # the endpoint's body (a missing body is this model's defaults when ``optional``)
    action: Callable[[Any], a.Action]
    optional: bool = False


# The action endpoints agents call most, by the last part of their path: their FastAPI routes
# below, and the fast path in front of FastAPI (api/hot_actions.py), both use these.
HOT: dict[str, HotRoute] = {
    "click": HotRoute(w.PointBody, lambda b: w.build("body", {"kind": "click", **_target(b)})),
    "double-click": HotRoute(w.PointBody, lambda b: w.build("body", {"kind": "click", **_target(b), "count": 2})),
    "right-click": HotRoute(w.PointBody,
                            lambda b: w.build("body", {"kind": "click", **_target(b), "button": "right"})),
    "mouse-down": HotRoute(w.PointBody, lambda b: w.build("body", {"kind": "mouse_down", "at": _pt(b)})),
    "mouse-up": HotRoute(w.PointBody, lambda b: w.build("body", {"kind": "mouse_up", "at": _pt(b)})),
    "drag": HotRoute(w.DragBody, _drag),
    "type": HotRoute(w.TypeBody, lambda b: w.build("body", {"kind": "type", "text": b.text,
                                                            "element": w.element(b.ref, b.snapshot_id)})),
    "hotkey": HotRoute(w.HotkeyBody, lambda b: w.build("body", {"kind": "press_keys", "keys": b.keys})),
    "key-down": HotRoute(w.KeyBody, lambda b: w.build("body", {"kind": "key_down", "key": b.key})),
    "key-up": HotRoute(w.KeyBody, lambda b: w.build("body", {"kind": "key_up", "key": b.key})),
    "scroll": HotRoute(w.ScrollBody, _scroll),
    "screenshot": HotRoute(w.ScreenshotBody, lambda b: w.build("body", {"kind": "screenshot", "base64": b.base64}),
                           optional=True),
}


async def run_hot(request: Request, org: str, computer_id: str, name: str, body: w._Body) -> JsonBody:
    return await _run(request, org, computer_id, [HOT[name].action(body)], body)


@router.post("/computers/{computer_id}/click")
async def click(computer_id: str, body: w.PointBody, request: Request,
                org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "click", body)


@router.post("/computers/{computer_id}/double-click")
async def double_click(computer_id: str, body: w.PointBody, request: Request,
                       org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "double-click", body)


@router.post("/computers/{computer_id}/right-click")
async def right_click(computer_id: str, body: w.PointBody, request: Request,
                      org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "right-click", body)


@router.post("/computers/{computer_id}/mouse-down")
async def mouse_down(computer_id: str, body: w.PointBody, request: Request,
                     org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "mouse-down", body)


@router.post("/computers/{computer_id}/mouse-up")
async def mouse_up(computer_id: str, body: w.PointBody, request: Request,
                   org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "mouse-up", body)


@router.post("/computers/{computer_id}/drag")
async def drag(computer_id: str, body: w.DragBody, request: Request,
               org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "drag", body)


@router.post("/computers/{computer_id}/type")
async def type_text(computer_id: str, body: w.TypeBody, request: Request,
                    org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "type", body)


@router.post("/computers/{computer_id}/hotkey")
async def hotkey(computer_id: str, body: w.HotkeyBody, request: Request,
                 org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "hotkey", body)


@router.post("/computers/{computer_id}/key-down")
async def key_down(computer_id: str, body: w.KeyBody, request: Request,
                   org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "key-down", body)


@router.post("/computers/{computer_id}/key-up")
async def key_up(computer_id: str, body: w.KeyBody, request: Request,
                 org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "key-up", body)


@router.post("/computers/{computer_id}/scroll")
async def scroll(computer_id: str, body: w.ScrollBody, request: Request,
                 org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "scroll", body)


@router.post("/computers/{computer_id}/fill")
async def fill(computer_id: str, body: w.FillBody, request: Request, org: str = Depends(current_org)) -> JsonBody:
    """Ours: replace the value of the field ``ref`` (of a snapshot) with ``text``."""
    step = w.build("body", {"kind": "fill", "element": w.element(body.ref, body.snapshot_id), "text": body.text})
    return await _run(request, org, computer_id, [step], body)


@router.post("/computers/{computer_id}/select-option")
async def select_option(computer_id: str, body: w.SelectBody, request: Request,
                        org: str = Depends(current_org)) -> JsonBody:
    """Ours: select options of the ``<select>`` ``ref`` by value or label; ``result.selected`` says which."""
    values = body.values if body.values is not None else ([body.value] if body.value is not None else [])
    step = w.build("body", {"kind": "select_option", "element": w.element(body.ref, body.snapshot_id),
                            "values": values})
    return await _run(request, org, computer_id, [step], body)


@router.post("/computers/{computer_id}/upload-file")
async def upload_file(computer_id: str, body: w.UploadFileBody, request: Request,
                      org: str = Depends(current_org)) -> JsonBody:
    """Ours: put the computer's file ``path`` (in ``dir``, uploaded with ``PUT /computers/{id}/files/{path}``
    or downloaded) into the file input at ``x``/``y`` or ``ref``; ``result`` names it and its size."""
    step = w.build("body", {"kind": "upload_file", "path": body.path, "dir": body.dir, **_target(body)})
    return await _run(request, org, computer_id, [step], body)


@router.post("/computers/{computer_id}/snapshot")
async def snapshot(computer_id: str, request: Request, body: w.SnapshotBody | None = None,
                   org: str = Depends(current_org)) -> JsonBody:
    """Ours: an element snapshot of the tab, Playwright's ``[ref=eN]`` text or JSON (``result.snapshot_id``,
    ``result.snapshot`` or ``result.elements``); act on its refs with ``ref`` instead of ``x``/``y``."""
    body = body or w.SnapshotBody()
    step = w.build("body", {"kind": "snapshot", "format": body.format, "interactive_only": body.interactive_only,
                            "viewport_only": body.viewport_only, "max_chars": body.max_chars, "boxes": body.boxes})
    return await _run(request, org, computer_id, [step], body)


@router.post("/computers/{computer_id}/markdown")
async def markdown(computer_id: str, request: Request, body: w.MarkdownBody | None = None,
                   org: str = Depends(current_org)) -> JsonBody:
    """Ours: the page as markdown (``result.markdown``; ``main_only``, ``links``, ``images``, ``max_chars``)."""
    body = body or w.MarkdownBody()
    step = w.build("body", {"kind": "markdown", "main_only": body.main_only, "links": body.links,
                            "images": body.images, "max_chars": body.max_chars})
    return await _run(request, org, computer_id, [step], body)


@router.post("/computers/{computer_id}/navigate")
async def navigate(computer_id: str, body: w.NavigateBody, request: Request,
                   org: str = Depends(current_org)) -> JsonBody:
    return await _run(request, org, computer_id, [w.build("body", {"kind": "navigate", "url": body.url})], body)


@router.post("/computers/{computer_id}/screenshot")
async def screenshot(computer_id: str, request: Request, body: w.ScreenshotBody | None = None,
                     org: str = Depends(current_org)) -> JsonBody:
    return await run_hot(request, org, computer_id, "screenshot", body or w.ScreenshotBody())


@router.post("/computers/{computer_id}/html")
async def html(computer_id: str, request: Request, body: w.HtmlBody | None = None,
               org: str = Depends(current_org)) -> JsonBody:
    body = body or w.HtmlBody()
    return await _run(request, org, computer_id, [w.build("body", {"kind": "get_html"})], body)


@router.post("/computers/{computer_id}/viewport")
async def viewport(computer_id: str, body: w.ViewportBody, request: Request,
                   org: str = Depends(current_org)) -> JsonBody:
    step = w.build("body", {"kind": "set_viewport", "width": body.width, "height": body.height,
                            "scale_factor": body.scale_factor})
    return await _run(request, org, computer_id, [step], body)


@router.post("/computers/{computer_id}/debug")
async def debug(computer_id: str, body: w.DebugBody, request: Request,
                org: str = Depends(current_org)) -> JsonBody:
    step = w.build("body", {"kind": "run_command", "command": body.command,
                            "timeout_seconds": body.timeout_seconds,
                            "max_output_length": body.max_output_length})
    return await _run(request, org, computer_id, [step], body)


@router.post("/computers/{computer_id}/change-proxy")
async def change_proxy(computer_id: str, request: Request, body: w.ProxyBody | None = None,
                       org: str = Depends(current_org)) -> JsonBody:
    body = body or w.ProxyBody()
    step = w.build("body", {"kind": "change_proxy", "proxy_url": body.proxy_url})
    return await _run(request, org, computer_id, [step], body)


@router.post("/computers/{computer_id}/execute")
async def execute(computer_id: str, body: w.ExecuteBody, request: Request,
                  org: str = Depends(current_org)) -> JsonBody:
    actions, tab = w.translate(body.action, "action")
    step = Step(actions, tab, body.include_context or bool(body.action.include_context))
    rt = runtime(request)
    reports = await rt.computers.perform(org, computer_id, [step], request_id=body.request_id,
                                         render=w.renderer(rt.files, base_url(request)))
    return JsonBody(w.action_result(reports[-1], rt.files, base_url(request)))


@router.post("/computers/{computer_id}/batch", responses={200: {"model": w.BatchResult}})
async def batch(computer_id: str, body: w.BatchBody, request: Request,
                org: str = Depends(current_org)) -> JsonBody:
    """Run ``actions`` in order, stopping at the first error; every result so far is returned.

    Every action is translated before any runs, so a malformed one rejects the
    whole batch; the batch then holds the computer for its whole run.
    """
    steps = []
    for i, act in enumerate(body.actions):
        actions, tab = w.translate(act, f"actions[{i}]")
        steps.append(Step(actions, tab, body.include_context or bool(act.include_context)))
    rt = runtime(request)
    base = base_url(request)
    reports = await rt.computers.perform(org, computer_id, steps, request_id=body.request_id,
                                         render=w.renderer(rt.files, base))
    results = [w.action_result(r, rt.files, base) for r in reports]
    failed = next((r for r in results if r["status"] != "success"), None)
    return JsonBody({
        "status": "error" if failed else "success",
        "error_message": failed["error_message"] if failed else None,
        "results": results,
        "completed": sum(r["status"] == "success" for r in results),
        "total": len(body.actions),
        "request_id": body.request_id,
    })
