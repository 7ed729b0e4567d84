"""The FastAPI application: routers, error mapping and the runtime's life."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from opencone import __version__
from opencone.agent.service import AgentService
from opencone.api import errors, openapi
from opencone.api.auth import REDACT_TOKENS
from opencone.api.error_counter import ErrorCounter
from opencone.api.gateway_hot import GatewayHot
from opencone.api.guard import BodyGuard
from opencone.api.hot_actions import HotActions
from opencone.api.routes import actions, agent, cdp, computers, events, exec, files, health, live, screencast, tabs
from opencone.api.routes import chat as chat_routes
from opencone.api.routes import computer_files as computer_files_routes
from opencone.api.routes import metrics as metrics_routes
from opencone.api.routes import models as model_routes
from opencone.api.routes import notte as notte_routes
from opencone.api.routes import notte_seed as notte_seed_routes
from opencone.api.routes import openenv as openenv_routes
from opencone.api.routes import perform as perform_routes
from opencone.api.routes import recordings as recording_routes
from opencone.api.routes import responses as response_routes
from opencone.api.routes import root as root_routes
from opencone.api.routes import step as step_routes
from opencone.api.server_timing import ServerTiming
from opencone.api.wire import openai as openai_wire
from opencone.api.wire.actions import renderer
from opencone.config import Settings
from opencone.core.metrics import watch_agents
from opencone.core.runtime import Runtime
from opencone.gateway.service import Gateway
from opencone.mcp import mount as mcp_mount

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        # the brains floor, above the services: models and their clients (a models file's keys by name)
        gateway = Gateway(settings, runtime, os.environ)
        app.state.runtime, app.state.gateway = runtime, gateway
        await runtime.start()
        await gateway.start()
        # the agent loop, beside the gateway: it renders screenshots as the REST API does (capability URLs)
        agents = AgentService(runtime, gateway, lambda base: renderer(runtime.files, base))
        app.state.agents = agents
        watch_agents(runtime.metrics, agents)
        await agents.start()
        if runtime.first_key:
            # printed once, on the first start without OPENCONE_API_KEY; only its hash is stored
            print(f"\nopencone: created an API key for the default organisation (shown once):\n\n"
                  f"    {runtime.first_key}\n\n"
                  f"export TZAFON_API_KEY={runtime.first_key}\n", file=sys.stderr, flush=True)
        log.info("opencone %s ready on %s:%s, data in %s", __version__, settings.host, settings.port,
                 settings.data_dir)
        try:
            async with mcp.running():  # /mcp's sessions (a mounted app's own lifespan never runs)
                yield
        finally:
            await agents.stop()
            await gateway.stop()
            await runtime.stop()

    app = FastAPI(
        title="opencone",
        version=__version__,
        description="Self-hosted computers for AI agents, over the Lightcone API.",
        lifespan=lifespan,
    )
    errors.install(app)
    openapi.install(app)  # error bodies, auth and media types as the server really answers
    logging.getLogger("uvicorn.error").addFilter(REDACT_TOKENS)  # WebSocket handshakes carry ?token=
    for module in (health, computers, actions, tabs, files, exec, events, screencast, live, cdp, agent):
        app.include_router(module.router)
    app.include_router(computer_files_routes.router)  # a computer's downloads and workspace
    app.include_router(step_routes.router)  # an action and the observation after it, in one round trip (gym)
    app.include_router(perform_routes.router)  # canonical actions as the MCP tools run them (fleet replicas)
    app.include_router(openenv_routes.router)  # the OpenEnv protocol under /openenv (api/openenv_sessions.py)
    app.include_router(recording_routes.router)  # a computer's screen recorded (core/recording.py)
    for module in (notte_seed_routes, notte_routes):  # the Notte session API, both eras (api/notte_sessions.py)
        app.include_router(module.router)
    for module in (model_routes, chat_routes, response_routes):  # the model gateway (OpenAI-shaped errors)
        app.include_router(module.router)
    for module in (root_routes, metrics_routes):  # GET /, and the server seen whole (/metrics, /status)
        app.include_router(module.router)
    mcp = mcp_mount.install(app, settings)  # /mcp: computers as MCP tools (opencone/mcp/), or its 501
    app.add_middleware(HotActions)  # the hot action routes, answered before FastAPI's routing
    app.add_middleware(GatewayHot)  # the model gateway's hot routes (chat, responses create), likewise
    # outermost: bodies are bounded and checked before either of the two routings parses one
    app.add_middleware(BodyGuard, max_body_bytes=settings.max_body_bytes,
                       renderers={exec.STREAM_PATH: exec.refused, openai_wire.PATHS: openai_wire.refused,
                                  notte_seed_routes.PATHS: notte_seed_routes.refused},
                       raw_uploads=computer_files_routes.UPLOAD_PATH)  # files: streamed, capped by their route
    app.add_middleware(ErrorCounter)  # around even that: every layer's error answers, counted for GET /metrics
    app.add_middleware(ServerTiming)  # outermost: Server-Timing app;dur= on every answer (api/server_timing.py)
    return app
