"""BrowserGym and OSWorld action dialects (api/wire/gym_dialects.py, shared with the server's
OpenEnv endpoint, which takes them too)."""

from opencone.api.wire.gym_dialects import (
    OSWORLD_ACTIONS,
    SCROLL_CLICK_PIXELS,
    AdapterError,
    BrowserGymAdapter,
    OSWorldAdapter,
    Translated,
)

__all__ = ["OSWORLD_ACTIONS", "SCROLL_CLICK_PIXELS", "AdapterError", "BrowserGymAdapter", "OSWorldAdapter",
           "Translated"]
