"""Key names: one canonical vocabulary, many spellings.

Canonical names are the DOM ``KeyboardEvent.key`` values (``Control``,
``ArrowUp``, ``F13``, ``a``), which Playwright also uses. Wire dialects send
``ctrl``, ``CMD``, ``esc``, ``RETURN``, ``PGDN``…; every driver receives only the
canonical form and maps it once to its own input system.
"""

from __future__ import annotations

import unicodedata

MODIFIERS = ("Shift", "Control", "Alt", "Meta")

_NAMED = [
    *MODIFIERS,
    "Enter", "Escape", "Tab", "Backspace", "Delete", "Insert", "Space",
    "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight",
    "Home", "End", "PageUp", "PageDown", "CapsLock", "NumLock", "ScrollLock",
    "PrintScreen", "Pause", "ContextMenu",
    *[f"F{n}" for n in range(1, 25)],
]

_ALIASES: dict[str, str] = {
    "ctrl": "Control", "control": "Control", "ctl": "Control",
    "cmd": "Meta", "command": "Meta", "meta": "Meta", "super": "Meta", "win": "Meta",
    "windows": "Meta", "os": "Meta",
    "alt": "Alt", "option": "Alt", "opt": "Alt",
    "shift": "Shift",
    "enter": "Enter", "return": "Enter", "kp_enter": "Enter",
    "esc": "Escape", "escape": "Escape",
    "tab": "Tab",
    "backspace": "Backspace", "back_space": "Backspace", "bksp": "Backspace",
    "delete": "Delete", "del": "Delete",
    "insert": "Insert", "ins": "Insert",
    "space": "Space", "spacebar": "Space", " ": "Space",
    "up": "ArrowUp", "arrowup": "ArrowUp", "arrow_up": "ArrowUp",
    "down": "ArrowDown", "arrowdown": "ArrowDown", "arrow_down": "ArrowDown",
    "left": "ArrowLeft", "arrowleft": "ArrowLeft", "arrow_left": "ArrowLeft",
    "right": "ArrowRight", "arrowright": "ArrowRight", "arrow_right": "ArrowRight",
    "home": "Home", "end": "End",
    "pageup": "PageUp", "page_up": "PageUp", "pgup": "PageUp", "prior": "PageUp",
    "pagedown": "PageDown", "page_down": "PageDown", "pgdn": "PageDown", "next": "PageDown",
    "capslock": "CapsLock", "caps_lock": "CapsLock",
    "numlock": "NumLock", "scrolllock": "ScrollLock",
    "printscreen": "PrintScreen", "print": "PrintScreen", "prtsc": "PrintScreen",
    "pause": "Pause", "break": "Pause",
    "contextmenu": "ContextMenu", "menu": "ContextMenu", "apps": "ContextMenu",
    "plus": "+", "minus": "-",
}
_ALIASES.update({name.lower(): name for name in _NAMED})

ALLOWED_DESCRIPTION = (
    "a single character, or one of (case-insensitive): "
    "shift, ctrl/control, alt/option, meta/cmd/super/win, enter/return, escape/esc, tab, backspace, "
    "delete/del, insert, space, arrowup/up, arrowdown/down, arrowleft/left, arrowright/right, home, end, "
    "pageup/pgup, pagedown/pgdn, capslock, printscreen, pause, contextmenu, f1-f24"
)


class UnknownKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"unknown key {key!r}; allowed: {ALLOWED_DESCRIPTION}")
        self.key = key


# control characters that name a key; every other one (NUL…) and a lone surrogate is no key: refused
# here, before any driver could send it (a desktop would turn it into a keysym)
_CONTROL_KEYS = {" ": "Space", "\n": "Enter", "\r": "Enter", "\t": "Tab", "\b": "Backspace", "\x1b": "Escape",
                 "\x7f": "Delete"}


def normalize_key(key: str) -> str:
    """The canonical name of ``key``, or ``UnknownKeyError``."""
    if not isinstance(key, str) or key == "":
        raise UnknownKeyError(str(key))
    if len(key) == 1:
        named = _CONTROL_KEYS.get(key)
        if named is not None:
            return named
        if unicodedata.category(key) in ("Cc", "Cs"):
            raise UnknownKeyError(key)
        return key
    found = _ALIASES.get(key.strip().lower())
    if found is None:
        raise UnknownKeyError(key)
    return found


def normalize_chord(keys: list[str]) -> list[str]:
    """Canonical names for a chord such as ``["CTRL", "C"]``.

    A letter pressed together with Control, Alt or Meta is sent lower-case, as a
    person would press it: agents write ``CTRL+C`` but mean the ``c`` key.
    """
    names = [normalize_key(k) for k in keys]
    if any(n in ("Control", "Alt", "Meta") for n in names):
        names = [n.lower() if len(n) == 1 and n.isalpha() else n for n in names]
    return names
