"""Canonical key names and characters to X keysyms.

Canonical names are DOM ``KeyboardEvent.key`` values (see core/keys.py); X
knows keys by keysym. Characters map to keysyms directly: Latin-1 keysyms equal
the code point, every other character has the Unicode keysym
``0x01000000 + code point``, which X clients decode to that character.
"""

from __future__ import annotations

from Xlib import XK

_NAMED: dict[str, str] = {
    "Shift": "Shift_L", "Control": "Control_L", "Alt": "Alt_L", "Meta": "Super_L",
    "Enter": "Return", "Escape": "Escape", "Tab": "Tab", "Backspace": "BackSpace",
    "Delete": "Delete", "Insert": "Insert", "Space": "space",
    "ArrowUp": "Up", "ArrowDown": "Down", "ArrowLeft": "Left", "ArrowRight": "Right",
    "Home": "Home", "End": "End", "PageUp": "Prior", "PageDown": "Next",
    "CapsLock": "Caps_Lock", "NumLock": "Num_Lock", "ScrollLock": "Scroll_Lock",
    "PrintScreen": "Print", "Pause": "Pause", "ContextMenu": "Menu",
    **{f"F{n}": f"F{n}" for n in range(1, 25)},
}

# Control characters a text may contain, typed as the key a person would press.
_CONTROL_CHARS: dict[str, str] = {"\n": "Return", "\r": "Return", "\t": "Tab", "\b": "BackSpace",
                                  "\x1b": "Escape"}

SHIFT = XK.string_to_keysym("Shift_L")


def char_keysym(char: str) -> int:
    """The keysym that types ``char``."""
    named = _CONTROL_CHARS.get(char)
    if named:
        return XK.string_to_keysym(named)
    cp = ord(char)
    if 0x20 <= cp <= 0x7E or 0xA0 <= cp <= 0xFF:
        return cp
    return 0x01000000 + cp


def key_keysym(key: str) -> int:
    """The keysym of a canonical key name (``Control``, ``F13``, ``a``)."""
    name = _NAMED.get(key)
    if name is not None:
        return XK.string_to_keysym(name)
    if len(key) == 1:
        return char_keysym(key)
    raise ValueError(f"unknown key {key!r}")


def typeable(char: str) -> bool:
    """Whether ``char`` can be typed; other control characters are skipped."""
    return char in _CONTROL_CHARS or not (ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0)
