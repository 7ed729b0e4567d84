"""Model adapters: one per provider format, all behind the interface of ``base.py``.

``adapter_for(entry, client)`` picks the adapter for a registry entry
(``gateway/registry.py``): ``openai`` → the Responses computer tool, ``anthropic``
→ Anthropic computer use, ``openai-chat`` → a chat VLM in the entry's dialect,
``lightcone`` → Lightcone's Responses API with its ``computer_use`` tool.
"""

from __future__ import annotations

from typing import Any

from opencone.agent.adapters.base import Adapter


def adapter_for(entry: Any, client: Any) -> Adapter:
    """The adapter for a registry entry (``ModelEntry``) over ``client``: an ``AsyncOpenAI`` for
    ``openai``, ``openai-chat`` and ``lightcone`` entries, an ``AsyncAnthropic`` for ``anthropic``.
    ``ValueError`` for a dialect the loop does not speak."""
    provider = entry.provider
    if provider == "openai":
        from opencone.agent.adapters.responses import ResponsesAdapter

        return ResponsesAdapter(entry.upstream_model, client)
    if provider == "lightcone":
        from opencone.agent.adapters.responses import LightconeAdapter

        return LightconeAdapter(entry.upstream_model, client)
    if provider == "anthropic":
        from opencone.agent.adapters.anthropic import AnthropicAdapter

        return AnthropicAdapter(entry.upstream_model, client, entry.display)
    if provider == "openai-chat":
        from opencone.agent.adapters.chat import ChatAdapter

        return ChatAdapter(entry.upstream_model, client, entry.dialect or "qwen3vl",
                           getattr(entry, "coordinates", None))
    raise ValueError(f"no adapter for provider {provider!r}")
