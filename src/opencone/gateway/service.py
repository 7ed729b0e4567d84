"""Everything the gateway holds while the server runs: the models it can call and their clients.

The brains floor sits above the services: the edge builds this beside the
``Runtime`` (api/app.py) and hands both to the routes; nothing in ``core`` knows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opencone.core.runtime import Runtime
from opencone.gateway.clients import UpstreamClients
from opencone.gateway.registry import ModelRegistry


class Gateway:
    def __init__(self, settings: Any, runtime: Runtime, environ: Mapping[str, str]) -> None:
        """``environ``: where a models file's ``api_key_env`` names are looked up. A bad models
        file stops the start here, naming the entry and the field."""
        self.settings = settings
        self.runtime = runtime
        self.models = ModelRegistry.load(settings, environ)
        self.upstreams = UpstreamClients(settings.model_timeout_seconds, settings.model_max_retries)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.upstreams.close()
