"""Text typed as the key events of a US keyboard, the way Playwright's ``keyboard.type`` sends them.

Playwright sends each character as its own round trip (key down, wait, key up,
wait) through its node driver; here the same ``Input.dispatchKeyEvent`` commands
are queued on opencone's own CDP connection and answered together (Chromium
handles one session's commands in order). A character with no key on the layout
(``é``, ``✓``, ``日``) is inserted as text, as Playwright does.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Key(NamedTuple):
    key: str  # KeyboardEvent.key
    code: str  # KeyboardEvent.code
    key_code: int  # windowsVirtualKeyCode
    text: str  # what the key types ("" for none: a raw key down)


def _layout() -> dict[str, Key]:
    keys: dict[str, Key] = {}
    for c in "abcdefghijklmnopqrstuvwxyz":
        keys[c] = Key(c, f"Key{c.upper()}", ord(c.upper()), c)
        keys[c.upper()] = Key(c.upper(), f"Key{c.upper()}", ord(c.upper()), c.upper())
    for n, shifted in enumerate(")!@#$%^&*("):
        keys[str(n)] = Key(str(n), f"Digit{n}", 48 + n, str(n))
        keys[shifted] = Key(shifted, f"Digit{n}", 48 + n, shifted)
    for plain, shifted, code, key_code in (
        ("-", "_", "Minus", 189), ("=", "+", "Equal", 187), ("[", "{", "BracketLeft", 219),
        ("]", "}", "BracketRight", 221), ("\\", "|", "Backslash", 220), (";", ":", "Semicolon", 186),
        ("'", '"', "Quote", 222), (",", "<", "Comma", 188), (".", ">", "Period", 190), ("/", "?", "Slash", 191),
        ("`", "~", "Backquote", 192),
    ):
        keys[plain] = Key(plain, code, key_code, plain)
        keys[shifted] = Key(shifted, code, key_code, shifted)
    keys[" "] = Key(" ", "Space", 32, " ")
    keys["\n"] = keys["\r"] = Key("Enter", "Enter", 13, "\r")
    return keys


US_LAYOUT = _layout()


def key_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The CDP commands (method, params) that type ``text`` with no modifier held."""
    commands: list[tuple[str, dict[str, Any]]] = []
    for char in text:
        key = US_LAYOUT.get(char)
        if key is None:
            commands.append(("Input.insertText", {"text": char}))
            continue
        down: dict[str, Any] = {"type": "keyDown" if key.text else "rawKeyDown", "modifiers": 0, "key": key.key,
                                "code": key.code, "windowsVirtualKeyCode": key.key_code, "location": 0,
                                "autoRepeat": False, "isKeypad": False}
        if key.text:
            down["text"] = down["unmodifiedText"] = key.text
        commands.append(("Input.dispatchKeyEvent", down))
        commands.append(("Input.dispatchKeyEvent", {"type": "keyUp", "modifiers": 0, "key": key.key, "code": key.code,
                                                    "windowsVirtualKeyCode": key.key_code, "location": 0}))
    return commands
