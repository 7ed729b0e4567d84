"""Mouse and keyboard through one persistent XTest connection.

Every method here is blocking and must run on the desktop's X thread: an
Xlib ``Display`` is not thread-safe. Each call ends with ``display.sync()``,
which returns once the X server has processed the events, so the next action
(a screenshot, say) sees their effect on the server side.

A click first asks the window manager to focus the window under the pointer
and waits until it has (openbox itself binds no clicks on windows: see
apps.py), so the keys of the next action go where a person would expect.
"""

from __future__ import annotations

import math
import time

from Xlib import X, Xatom
from Xlib import error as xerror
from Xlib.display import Display
from Xlib.ext import xtest
from Xlib.protocol import event as xevent
from Xlib.xobject.drawable import Window

from opencone.drivers.desktop.keyboard import KeyMap
from opencone.drivers.desktop.keymap import SHIFT, char_keysym, key_keysym, typeable

BUTTONS = {"left": 1, "middle": 2, "right": 3, "back": 8, "forward": 9}
_WHEEL = {"up": 4, "down": 5, "left": 6, "right": 7}
_WHEEL_STEP = 100.0  # pixels of scroll delta per wheel click
_MAX_WHEEL_CLICKS = 200
_SYNC_EVERY = 200  # long texts: sync now and then so the server's queue stays short
# Chromium drops a repeated click whose (millisecond) X timestamp equals the last one's
# as a duplicate: the clicks of a double click must fall in different milliseconds
_CLICK_GAP = 0.003
_FOCUS_WAIT = 0.5  # seconds to wait for the window manager (a focus change, a sync)


class XInput:
    def __init__(self, display: Display) -> None:
        self.d = display
        self.root = display.screen().root
        self.keys = KeyMap(display)
        self._held: dict[str, list[int]] = {}  # canonical key -> keycodes pressed for it
        self._clients: dict[int, int | None] = {}  # top-level (frame) window -> its client window
        self._net_active = display.intern_atom("_NET_ACTIVE_WINDOW")
        self._wm_state = display.intern_atom("WM_STATE")
        self._frame_extents = display.intern_atom("_NET_FRAME_EXTENTS")
        self._request_extents = display.intern_atom("_NET_REQUEST_FRAME_EXTENTS")
        self._probe: Window | None = None  # an unmapped window for wm_sync

    # -- keys ---------------------------------------------------------------------------
    def _shift(self) -> int:
        found = self.keys.keycode(SHIFT)
        assert found is not None, "the keyboard map has no Shift"
        return found[0]

    def _tap(self, keysym: int) -> None:
        keycode, level = self.keys.locate(keysym)
        shift = self._shift() if level == 1 else None
        if shift:
            xtest.fake_input(self.d, X.KeyPress, shift)
        xtest.fake_input(self.d, X.KeyPress, keycode)
        xtest.fake_input(self.d, X.KeyRelease, keycode)
        if shift:
            xtest.fake_input(self.d, X.KeyRelease, shift)
        self.keys.pressed(keycode)

    def type_text(self, text: str) -> None:
        keysyms = [char_keysym(c) for c in text.replace("\r\n", "\n") if typeable(c)]
        self.keys.prepare(keysyms)
        for i, keysym in enumerate(keysyms):
            self._tap(keysym)
            if i % _SYNC_EVERY == _SYNC_EVERY - 1:
                self.d.sync()
        self.d.sync()

    def _down(self, key: str) -> None:
        keycode, level = self.keys.locate(key_keysym(key))
        codes = [keycode]
        if level == 1:  # "A", "+": the shifted level needs Shift
            codes.insert(0, self._shift())
        for code in codes:
            xtest.fake_input(self.d, X.KeyPress, code)
        self.keys.pressed(keycode)
        self._held[key] = codes

    def _up(self, key: str) -> None:
        codes = self._held.pop(key, None)
        if codes is None:
            codes = [self.keys.locate(key_keysym(key))[0]]
        for code in reversed(codes):
            xtest.fake_input(self.d, X.KeyRelease, code)

    def press_keys(self, keys: list[str]) -> None:
        self.keys.prepare(key_keysym(k) for k in keys)
        done: list[str] = []
        try:
            for key in keys:
                self._down(key)
                done.append(key)
            if len(keys) > 1:
                # a window manager shortcut (Alt+Tab) grabs the keyboard when it sees the chord and
                # ends when it sees the modifier go up: let it grab before the keys go up
                self.wm_sync()
        finally:
            for key in reversed(done):
                self._up(key)
            self.d.sync()
        if len(keys) > 1:
            self.wm_sync()  # and let it move the focus before the next action types

    def wm_sync(self) -> None:
        """Wait until the window manager has handled every event sent before now.

        It answers a _NET_REQUEST_FRAME_EXTENTS (for a window of ours that it does not
        manage) after everything ahead of it in its queue, by setting a property.
        """
        if self._probe is None:
            self._probe = self.root.create_window(-10, -10, 1, 1, 0, X.CopyFromParent)
        self._probe.delete_property(self._frame_extents)
        ask = xevent.ClientMessage(window=self._probe, client_type=self._request_extents,
                                   data=(32, [0, 0, 0, 0, 0]))
        self.root.send_event(ask, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask)
        self.d.flush()
        deadline = time.monotonic() + _FOCUS_WAIT
        while time.monotonic() < deadline:
            if self._probe.get_full_property(self._frame_extents, X.AnyPropertyType) is not None:
                return
            time.sleep(0.0005)

    def key_down(self, key: str) -> None:
        self._down(key)
        self.d.sync()

    def key_up(self, key: str) -> None:
        self._up(key)
        self.d.sync()
        self.wm_sync()  # the end of a held chord: the window manager may act on it

    # -- click to focus -----------------------------------------------------------------
    def _active(self) -> int:
        prop = self.root.get_full_property(self._net_active, Xatom.WINDOW)
        return int(prop.value[0]) if prop is not None and len(prop.value) else 0

    def _client_of(self, frame: object) -> int | None:
        """The managed client window inside a top-level window (the one carrying WM_STATE)."""
        key = frame.id  # type: ignore[attr-defined]
        if key in self._clients:
            return self._clients[key]
        found: int | None = None
        level = [frame]
        for _depth in range(3):
            deeper = []
            for win in level:
                if win.get_full_property(self._wm_state, X.AnyPropertyType) is not None:  # type: ignore[attr-defined]
                    found = win.id  # type: ignore[attr-defined]
                    break
                deeper += win.query_tree().children  # type: ignore[attr-defined]
            if found is not None or not deeper:
                break
            level = deeper
        self._clients[key] = found
        return found

    def _focus_under_pointer(self) -> None:
        """Ask the window manager to focus and raise the window under the pointer; wait until it has."""
        try:
            child = self.root.query_pointer().child
            if not child:
                return
            client = self._client_of(child)
            if client is None or self._active() == client:
                return
            ask = xevent.ClientMessage(window=self.d.create_resource_object("window", client),
                                       client_type=self._net_active, data=(32, [2, X.CurrentTime, 0, 0, 0]))
            self.root.send_event(ask, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask)
            self.d.flush()
            deadline = time.monotonic() + _FOCUS_WAIT
            while self._active() != client and time.monotonic() < deadline:
                time.sleep(0.002)
        except xerror.XError:  # the window went away meanwhile
            self._clients.clear()

    # -- pointer ------------------------------------------------------------------------
    def _motion(self, x: float, y: float) -> None:
        xtest.fake_input(self.d, X.MotionNotify, x=round(x), y=round(y))

    def move(self, x: float, y: float) -> None:
        self._motion(x, y)
        self.d.sync()

    def click(self, x: float, y: float, button: str, count: int) -> None:
        b = BUTTONS[button]
        self._motion(x, y)
        self._focus_under_pointer()
        for i in range(count):
            if i:
                self.d.sync()
                time.sleep(_CLICK_GAP)
            xtest.fake_input(self.d, X.ButtonPress, b)
            xtest.fake_input(self.d, X.ButtonRelease, b)
        self.d.sync()

    def button(self, x: float | None, y: float | None, button: str, down: bool) -> None:
        if x is not None and y is not None:
            self._motion(x, y)
        if down:
            self._focus_under_pointer()
        xtest.fake_input(self.d, X.ButtonPress if down else X.ButtonRelease, BUTTONS[button])
        self.d.sync()

    def drag(self, path: list[tuple[float, float]], button: str) -> None:
        b = BUTTONS[button]
        (x, y), rest = path[0], path[1:]
        self._motion(x, y)
        self._focus_under_pointer()
        xtest.fake_input(self.d, X.ButtonPress, b)
        self.d.sync()
        for nx, ny in rest:
            # intermediate motion so drag thresholds and sliders see a movement, not a jump
            steps = max(1, min(10, math.ceil(math.hypot(nx - x, ny - y) / 20)))
            for i in range(1, steps + 1):
                self._motion(x + (nx - x) * i / steps, y + (ny - y) * i / steps)
                self.d.sync()
                time.sleep(0.002)  # separate motion events, as a hand makes them
            x, y = nx, ny
        xtest.fake_input(self.d, X.ButtonRelease, b)
        self.d.sync()

    def scroll(self, x: float, y: float, dx: float, dy: float) -> None:
        self._motion(x, y)
        for delta, back, forth in ((dy, "up", "down"), (dx, "left", "right")):
            if not delta:
                continue
            clicks = min(_MAX_WHEEL_CLICKS, max(1, round(abs(delta) / _WHEEL_STEP)))
            b = _WHEEL[forth if delta > 0 else back]
            for _ in range(clicks):
                xtest.fake_input(self.d, X.ButtonPress, b)
                xtest.fake_input(self.d, X.ButtonRelease, b)
        self.d.sync()
