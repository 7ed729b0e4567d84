"""opencone: open-source, self-hosted computers for AI agents."""

__version__ = "0.1.0"
