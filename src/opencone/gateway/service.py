"""Everything the gateway holds while the server runs: the models it can call, their clients,
and the chat and responses gateways over them.

The brains floor sits above the services: the edge builds this beside the
``Runtime`` (api/app.py) and hands both to the routes; nothing in ``core`` knows it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from opencone.core.runtime import Runtime
from opencone.gateway.chat import ChatGateway
from opencone.gateway.clients import UpstreamClients
from opencone.gateway.registry import ModelRegistry
from opencone.gateway.response_store import ResponseStore
from opencone.gateway.responses import ResponsesGateway

# the vendors' SDKs log every upstream request at INFO (through httpx2): one line per model call
logging.getLogger("httpx2").setLevel(logging.WARNING)


class Gateway:
    def __init__(self, settings: Any, runtime: Runtime, environ: Mapping[str, str]) -> None:
        """``environ``: where a models file's ``api_key_env`` names are looked up. A bad models
        file stops the start here, naming the entry and the field."""
        self.settings = settings
        self.runtime = runtime
        self.models = ModelRegistry.load(settings, environ)
        self.upstreams = UpstreamClients(settings.model_timeout_seconds, settings.model_max_retries)
        self.started_at = int(time.time())  # the `created` of every model object
        self.chat = ChatGateway(self.upstreams)
        self.responses = ResponsesGateway(self.models, self.upstreams, self.chat, ResponseStore(runtime.sessions))

    async def start(self) -> None:
        """After the runtime's start (its migrations)."""
        await self.responses.start()

    async def stop(self) -> None:
        await self.responses.stop()
        await self.upstreams.close()
