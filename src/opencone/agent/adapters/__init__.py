"""Model adapters: one per provider format, all behind the interface of ``base.py``.

``adapter_for(entry, client)`` picks the adapter for a registry entry
(``gateway/registry.py``): ``openai`` → the Responses computer tool, ``anthropic``
→ Anthropic computer use, ``openai-chat`` → a chat VLM in the entry's dialect,
``lightcone`` → Lightcone's Responses API with its ``computer_use`` tool.
"""
