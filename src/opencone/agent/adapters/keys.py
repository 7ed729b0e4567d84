"""Key names as models write them, into the canonical names of ``core/keys.py``.

Models write keys in many ways: OpenAI upper-case (``CTRL``, ``ENTER``,
``ARROWLEFT``), xdotool keysyms (Anthropic, Qwen: ``Return``, ``BackSpace``,
``Page_Down``, ``KP_0``, ``super_l``), ``+``-joined chords (``ctrl+shift+t``),
space-joined ones (UI-TARS ``ctrl c``) and JSON-encoded lists. Everything ends
in ``normalize_chord``; what it cannot name raises ``UnknownKeyError``.
"""

from __future__ import annotations

import json

from opencone.core.keys import UnknownKeyError, normalize_chord, normalize_key

__all__ = ["UnknownKeyError", "chord", "split_chord", "to_xdotool"]

# xdotool / X keysym names that core/keys.py does not know
_KEYSYMS = {
    "comma": ",", "period": ".", "slash": "/", "backslash": "\\", "semicolon": ";", "apostrophe": "'",
    "quotedbl": '"', "grave": "`", "equal": "=", "bracketleft": "[", "bracketright": "]",
    "braceleft": "{", "braceright": "}", "parenleft": "(", "parenright": ")", "exclam": "!", "at": "@",
    "numbersign": "#", "dollar": "$", "percent": "%", "asciicircum": "^", "ampersand": "&", "asterisk": "*",
    "underscore": "_", "colon": ":", "less": "<", "greater": ">", "question": "?", "bar": "|",
    "asciitilde": "~", "kp_add": "+", "kp_subtract": "-", "kp_multiply": "*", "kp_divide": "/",
    "kp_decimal": ".", "iso_left_tab": "Tab", "arrow": "ArrowRight",
}


def _one(name: str) -> str:
    raw = name.strip() if len(name) > 1 else name
    low = raw.lower()
    if low in _KEYSYMS:
        return _KEYSYMS[low]
    if low.startswith("kp_") and len(low) == 4 and low[3].isdigit():
        return low[3]
    for side in ("_l", "_r"):  # Control_L, Shift_R, Super_L, Alt_R, Meta_L
        if low.endswith(side) and low[:-2] in ("control", "shift", "alt", "super", "meta", "ctrl"):
            return normalize_key(low[:-2])
    return normalize_key(raw)


def split_chord(text: str, allow_space: bool = False) -> list[str]:
    """``"ctrl+shift+t"`` → ``["ctrl", "shift", "t"]``; ``"+"`` and ``"ctrl++"`` keep their plus;
    with ``allow_space``, ``"ctrl c"`` (UI-TARS) too. A JSON list (``'["ctrl", "a"]'``) is read as one."""
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            keys = json.loads(stripped)
        except ValueError:
            keys = None
        if isinstance(keys, list) and all(isinstance(k, str) for k in keys):
            return keys
    if len(text) == 1 or stripped == "":
        return [text]
    parts: list[str] = []
    for chunk in (stripped.split() if allow_space else [stripped]):
        if chunk == "+":
            parts.append("+")
            continue
        pieces = chunk.split("+")
        tail_plus = chunk.endswith("++")
        parts.extend(p for p in pieces if p)
        if tail_plus:
            parts.append("+")
    return parts or [text]


def chord(keys: list[str] | str, allow_space: bool = False) -> list[str]:
    """Canonical names for a chord given as a list of names or as one string (``"ctrl+a"``);
    each element of a list may itself be a ``+``-joined chord."""
    names: list[str] = []
    for item in ([keys] if isinstance(keys, str) else keys):
        if not isinstance(item, str):
            raise UnknownKeyError(str(item))
        names.extend(split_chord(item, allow_space) if len(item) > 1 else [item])
    return normalize_chord([_one(n) for n in names])


_XDOTOOL = {"Control": "ctrl", "Meta": "super", "Alt": "alt", "Shift": "shift", "Enter": "Return",
            "Backspace": "BackSpace", "Escape": "Escape", "ArrowUp": "Up", "ArrowDown": "Down",
            "ArrowLeft": "Left", "ArrowRight": "Right", "PageUp": "Page_Up", "PageDown": "Page_Down",
            "Space": "space", "CapsLock": "Caps_Lock", "PrintScreen": "Print", "ContextMenu": "Menu"}


def to_xdotool(keys: list[str]) -> str:
    """Canonical names as one xdotool chord (``ctrl+a``): how Anthropic and Qwen write keys."""
    return "+".join(_XDOTOOL.get(k, k) for k in keys)
