"""The agent loop (brains floor): a computer-use model does a task on a computer by itself.

``adapters/`` speak each provider's format (one stateless adapter per model, shared with the
gateway); ``loop.py`` runs one task step by step through the services, exactly as an HTTP
client would; ``service.py`` holds the running tasks, their event logs and their records.
"""
