"""The fake model providers' HTTP server: one Starlette app on 127.0.0.1, every vendor's routes
and the test hooks. Run as ``python -m fake_models`` (see ``launcher.start_fake``)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import chat, messages, responses
from .core import DEFAULT_API_KEY, Fault, Settings, State, answer_json, begin, reject

MODELS = ["computer-use-preview", "gpt-5.4", "tzafon.northstar-cua-fast", "tzafon.northstar-cua-fast-1.6",
          "Qwen/Qwen3-VL-8B-Instruct", "Tzafon/Northstar-CUA-Fast", "ByteDance-Seed/UI-TARS-1.5-7B",
          "fake-qwen3vl", "fake-northstar", "fake-uitars", "fake-chat", "claude-sonnet-4-5", "claude-opus-4-5"]
CREATED = 1_760_000_000


def _anthropic_caller(request: Request) -> bool:
    return "anthropic-version" in request.headers or "x-api-key" in request.headers


async def list_models(request: Request) -> Response:
    anthropic = _anthropic_caller(request)
    call = await begin(request, request.app.state.fake, "anthropic" if anthropic else "openai", "models")
    if isinstance(call, Response):
        return call
    if anthropic:
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-10-01T00:00:00Z"}
                for m in MODELS if m.startswith("claude")]
        return answer_json(call, {"data": data, "has_more": False, "first_id": data[0]["id"],
                                  "last_id": data[-1]["id"]})
    return answer_json(call, {"object": "list", "data": [_model(m) for m in MODELS]})


async def get_model(request: Request) -> Response:
    call = await begin(request, request.app.state.fake, "openai", "models")
    if isinstance(call, Response):
        return call
    model = request.path_params["model"]
    if model not in MODELS:
        return reject(call, "openai", 404, f"The model '{model}' does not exist", param="model",
                      code="model_not_found")
    return answer_json(call, _model(model))


def _model(model: str) -> dict[str, Any]:
    owner = "anthropic" if model.startswith("claude") else "tzafon" if "orthstar" in model else \
        "openai" if model in ("computer-use-preview", "gpt-5.4") else "fake"
    return {"id": model, "object": "model", "created": CREATED, "owned_by": owner}


# -- test hooks ------------------------------------------------------------------------------------------------
async def get_log(request: Request) -> Response:
    state: State = request.app.state.fake
    since = int(request.query_params.get("since", 0))
    bodies = request.query_params.get("bodies", "1") not in ("0", "false")
    entries = [e for e in state.log if e["seq"] > since]
    if not bodies:
        entries = [{k: v for k, v in e.items() if k != "body"} for e in entries]
    return JSONResponse(entries)


async def clear_log(request: Request) -> Response:
    request.app.state.fake.log.clear()
    return JSONResponse({"cleared": True})


def _describe(state: State) -> dict[str, Any]:
    return {"settings": asdict(state.settings), "faults": [f.describe() for f in state.faults],
            "requests": state.seq, "stored_responses": len(state.store.get("responses", {}).get("responses", {}))}


async def script(request: Request) -> Response:
    """``{"faults": [...], "clear_faults": bool, <setting>: value, …}``: settings change at once,
    faults are appended to the queue."""
    state: State = request.app.state.fake
    try:
        body = json.loads(await request.body() or b"{}")
        faults = [Fault.parse(f) for f in body.pop("faults", [])]
        if body.pop("clear_faults", False):
            state.faults.clear()
        state.settings.update(body)
    except (ValueError, TypeError, AttributeError) as exc:
        return JSONResponse({"error": str(exc)}, 400)
    state.faults.extend(faults)
    return JSONResponse(_describe(state))


async def reset(request: Request) -> Response:
    request.app.state.fake.reset()
    return JSONResponse(_describe(request.app.state.fake))


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True, **_describe(request.app.state.fake)})


def build_app(settings: Settings, log_file: Path | None = None) -> Starlette:
    chat_route = chat.create
    app = Starlette(routes=[
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/responses", responses.create, methods=["POST"]),
        Route("/v1/responses/{response_id}", responses.retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses.delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", responses.cancel, methods=["POST"]),
        Route("/v1/responses/{response_id}/input_items", responses.input_items, methods=["GET"]),
        Route("/v1/chat/completions", chat_route, methods=["POST"]),
        Route("/dialect/{dialect}/v1/chat/completions", chat_route, methods=["POST"]),
        Route("/v1/messages", messages.create, methods=["POST"]),
        Route("/_log", get_log, methods=["GET"]),
        Route("/_log", clear_log, methods=["DELETE"]),
        Route("/_script", script, methods=["POST"]),
        Route("/_reset", reset, methods=["POST"]),
        Route("/_health", health, methods=["GET"]),
    ])
    app.state.fake = State(settings, Settings(**asdict(settings)), log_file)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fake_models", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--log-file", type=Path, help="also append every finished request here, as JSONL")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--mode", choices=("policy", "fast"), default="policy")
    parser.add_argument("--fast-steps", type=int, default=3)
    parser.add_argument("--no-log-bodies", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings(api_key=args.api_key, latency=args.latency, mode=args.mode, fast_steps=args.fast_steps,
                        log_bodies=not args.no_log_bodies)
    app = build_app(settings, args.log_file)

    import uvicorn

    # IPPROTO_TCP named, so that asyncio sets TCP_NODELAY on each connection (it checks the
    # protocol number); a socket of protocol 0 would hold each answer's body ~40 ms (Nagle)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    # the socket already listens: connections wait in its backlog until uvicorn takes them
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # nobody reads the pipe after the port line
    server.run(sockets=[sock])
