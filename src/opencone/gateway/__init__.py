"""The model gateway (brains floor): the registry of models, the upstream clients, and the
``/v1`` endpoints' logic (chat completions, responses native or emulated, models)."""
