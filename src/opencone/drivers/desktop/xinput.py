"""Mouse and keyboard through one persistent XTest connection.

Every method here is blocking and must run on the desktop's X thread: an
Xlib ``Display`` is not thread-safe. An action ends once its events are sent,
without waiting for the X server: that round trip costs more than sending the
events does. The X server handles one connection's requests in order, so
the next action on this connection comes after them; the screenshot's damage
check is a round trip on this same connection, so a screenshot shows them; and
anything that looks through another connection (a command run on the desktop)
calls ``settle`` first, which waits for the X server if events were sent since.

After a click (or a button press) the caller asks ``focus_under_pointer`` as a
call of its own: it asks the window manager to focus and raise the window under
the pointer and waits until it has (openbox itself binds no clicks on windows:
see apps.py), so the keys of the next action go where a person would expect.
Clicking first and focusing after keeps the click itself a send, and the
window under the pointer is the one the click went to (or the one it opened).
The active window (_NET_ACTIVE_WINDOW) is known without asking: the connection
listens for property changes on the root and reads the property again only
after it changed; and the window a click lands on is known from the stacking
order the connection keeps (stacking.py). So a click on the window that already
has the focus needs no round trip and no focus call at all, and a focus change
is seen the moment the window manager announces it. When either is not known
for sure, the focus call asks the X server (QueryPointer).
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import Iterable
from typing import Any

from Xlib import X, Xatom
from Xlib import error as xerror
from Xlib.display import Display
from Xlib.ext import xtest
from Xlib.protocol import event as xevent
from Xlib.xobject.drawable import Window

from opencone.drivers.desktop.apps import WM_CHORD_MODIFIERS
from opencone.drivers.desktop.keyboard import KeyMap
from opencone.drivers.desktop.keymap import SHIFT, char_keysym, key_keysym, typeable
from opencone.drivers.desktop.stacking import UNSURE, WindowStack

BUTTONS = {"left": 1, "middle": 2, "right": 3, "back": 8, "forward": 9}
_WHEEL = {"up": 4, "down": 5, "left": 6, "right": 7}
_WHEEL_STEP = 100.0  # pixels of scroll delta per wheel click
_MAX_WHEEL_CLICKS = 200
_SYNC_EVERY = 200  # long texts: sync now and then so the server's queue stays short
# Chromium takes a button press whose (millisecond) X timestamp equals the last press's
# for that same press seen again, with its click count: the second click of a double click
# would be dropped, and a right click right after a double click would count as a double
# click. A press sent soon after another asks the X server (XTest's delay) to process it
# that much later, after every request before it, so the two times differ.
_PRESS_GAP_MS = 3
_PRESS_RECENT = 0.1  # seconds: a press sent sooner than this after the last one is held back
_INLINE_UNSENT = 32 * 1024  # can_send: bytes python-xlib may hold unsent (a socket's room is ~150 KiB)
_FOCUS_WAIT = 0.5  # seconds to wait for the window manager (a focus change, a sync)
_ICONIC_STATE = 3  # ICCCM WM_STATE: IconicState


class XInput:
    def __init__(self, display: Display) -> None:
        self.d = display
        self.root = display.screen().root
        self.keys = KeyMap(display, on_event=self._on_event)
        self._held: dict[str, list[int]] = {}  # canonical key -> keycodes pressed for it
        self._clients: dict[int, int | None] = {}  # top-level (frame) window -> its client window
        self._net_active = display.intern_atom("_NET_ACTIVE_WINDOW")
        self._wm_state = display.intern_atom("WM_STATE")
        self._frame_extents = display.intern_atom("_NET_FRAME_EXTENTS")
        self._request_extents = display.intern_atom("_NET_REQUEST_FRAME_EXTENTS")
        self._probe: Window | None = None  # an unmapped window for wm_sync
        self._answered = False  # the window manager set the probe's property (wm_sync)
        # _NET_ACTIVE_WINDOW as last read, and whether a PropertyNotify said it changed since
        self.root.change_attributes(event_mask=X.PropertyChangeMask | X.SubstructureNotifyMask)
        self._stack = WindowStack(self.root)  # after selecting its events: none is missed
        self._active_id = 0
        self._active_stale = True
        self.unsettled = False  # events were sent that the X server may not have processed yet
        self._last_press = 0.0  # time.monotonic() of the last button press sent

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

    @staticmethod
    def _text_keysyms(text: str) -> list[int]:
        return [char_keysym(c) for c in text.replace("\r\n", "\n") if typeable(c)]

    def sends_only_typing(self, text: str) -> bool:
        """Whether ``type_text(text)`` only sends: every character has a key, and the text is short."""
        keysyms = self._text_keysyms(text)
        return len(keysyms) < _SYNC_EVERY and self.keys.ready(keysyms)

    def sends_only_keys(self, keys: list[str], up: bool = False) -> bool:
        """Whether ``press_keys(keys)`` (or ``key_down``, or with ``up`` ``key_up``) only sends:
        every key has a keycode, and no window manager shortcut is made, which it waits for."""
        try:
            keysyms = [key_keysym(k) for k in keys]
        except ValueError:
            return False  # said in turn, on the X thread
        chord = self._wm_chord([*keys, *self._held]) if up else len(keys) > 1 and self._wm_chord(keys)
        return not chord and self.keys.ready(keysyms)

    def type_text(self, text: str) -> None:
        keysyms = self._text_keysyms(text)
        self.keys.prepare(keysyms)
        for i, keysym in enumerate(keysyms):
            self._tap(keysym)
            if i % _SYNC_EVERY == _SYNC_EVERY - 1:
                self.d.sync()
        self._send()

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

    @staticmethod
    def _wm_chord(keys: Iterable[str]) -> bool:
        """Whether held ``keys`` can make a window manager shortcut (its bindings: apps.py)."""
        return WM_CHORD_MODIFIERS is None or any(k in WM_CHORD_MODIFIERS for k in keys)

    def press_keys(self, keys: list[str]) -> None:
        self.keys.prepare(key_keysym(k) for k in keys)
        wm = len(keys) > 1 and self._wm_chord(keys)  # Control+A is the page's business alone
        done: list[str] = []
        try:
            for key in keys:
                self._down(key)
                done.append(key)
            if wm:
                # a window manager shortcut (Alt+Tab) grabs the keyboard when it sees the chord and
                # ends when it sees the modifier go up: let it grab before the keys go up
                self.wm_sync()
        finally:
            for key in reversed(done):
                self._up(key)
            self._send()
        if wm:
            self.wm_sync()  # and let it move the focus before the next action types

    def wm_sync(self) -> None:
        """Wait until the window manager has handled every event sent before now.

        It answers a _NET_REQUEST_FRAME_EXTENTS (for a window of ours that it does not
        manage) after everything ahead of it in its queue, by setting a property; the
        PropertyNotify of that ends the wait.
        """
        if self._probe is None:
            self._probe = self.root.create_window(-10, -10, 1, 1, 0, X.CopyFromParent,
                                                  event_mask=X.PropertyChangeMask)
        self._probe.delete_property(self._frame_extents)
        self._drain()  # an answer to an earlier ask that came late must not end this wait
        self._answered = False
        ask = xevent.ClientMessage(window=self._probe, client_type=self._request_extents,
                                   data=(32, [0, 0, 0, 0, 0]))
        self.root.send_event(ask, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask)
        self.d.flush()
        deadline = time.monotonic() + _FOCUS_WAIT
        while time.monotonic() < deadline:
            self._drain()
            if self._answered:
                return
            self._wait_event(deadline)

    def key_down(self, key: str) -> None:
        self._down(key)
        self._send()

    def key_up(self, key: str) -> None:
        wm = self._wm_chord([key, *self._held])
        self._up(key)
        self._send()
        if wm:
            self.wm_sync()  # the end of a held chord: the window manager may act on it

    # -- click to focus -----------------------------------------------------------------
    def _on_event(self, ev: Any) -> None:
        if self._stack.on_event(ev):
            if ev.type == X.DestroyNotify:
                self._clients.pop(ev.window.id, None)  # ids are reused
            return
        if getattr(ev, "type", None) != X.PropertyNotify:
            return
        if ev.atom == self._net_active:
            self._active_stale = True
        elif ev.atom == self._frame_extents and ev.state == X.PropertyNewValue and self._probe is not None \
                and ev.window.id == self._probe.id:
            self._answered = True

    def _drain(self) -> None:
        """Handle the events this connection has received (without waiting for more)."""
        while self.d.pending_events():
            self._on_event(self.d.next_event())

    def _sync(self) -> None:
        """Wait until the X server has processed every request so far; keep the event queue short."""
        self.d.sync()
        self.settled()

    def _send(self) -> None:
        """Send what is queued without waiting for the X server (see the module's notes)."""
        self.d.flush()
        self._drain()
        self.unsettled = True

    def can_send(self) -> bool:
        """Whether a send cannot block: the socket has room (a Unix socket is writable with three
        quarters of its buffer free) and python-xlib holds little unsent. Its flush sends only
        when the socket is writable, and then all it holds at once, which waits for the X server
        if that is more than the room: after the X server stopped reading for a while."""
        unsent = len(getattr(self.d.display, "data_send", b""))
        return unsent < _INLINE_UNSENT and bool(select.select([], [self.d], [], 0)[1])

    def settle(self) -> None:
        """Wait until the X server has processed the events sent so far, if any may be pending."""
        if self.unsettled:
            self._sync()

    def settled(self) -> None:
        """The caller made a round trip on this connection: everything sent before is processed."""
        self.unsettled = False
        self._drain()

    def _active(self) -> int:
        """The window manager's active window. Events that reached the connection are
        handled first, so this is as fresh as the last reply this connection read."""
        self._drain()
        if self._active_stale:
            self._active_stale = False  # before the read: a change during it marks it stale again
            prop = self.root.get_full_property(self._net_active, Xatom.WINDOW)
            self._active_id = int(prop.value[0]) if prop is not None and len(prop.value) else 0
        return self._active_id

    def _wait_event(self, deadline: float) -> None:
        """Sleep until the X server sends this connection something, or until ``deadline``."""
        if not self.d.pending_events():
            select.select([self.d], [], [], max(0.0, min(deadline - time.monotonic(), 0.05)))

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

    def focus_known(self, x: float, y: float) -> bool:
        """Whether the window at (x, y) is known to have the focus already (or to take none),
        from the events this connection has read (callers have just sent and drained), without
        a round trip."""
        if self._active_stale:
            return False
        frame = self._stack.top_at(x, y)
        if frame is None:
            return True  # the background: focus_under_pointer would do nothing either
        if frame == UNSURE or frame not in self._clients:
            return False
        client = self._clients[frame]
        return client is None or client == self._active_id

    def focus_under_pointer(self) -> None:
        """Ask the window manager to focus and raise the window under the pointer; wait until it has.

        The QueryPointer reply comes after every event the server sent before it, so a
        focus change made meanwhile (Alt+Tab, a new window) is known by the comparison.
        """
        try:
            pointer = self.root.query_pointer()
            if not pointer.child:
                return
            client = self._client_of(pointer.child)
            if client is None or self._active() == client:
                return
            window = self.d.create_resource_object("window", client)
            if not self._inside(window, pointer.root_x, pointer.root_y) or self._iconic(window):
                return
            ask = xevent.ClientMessage(window=self.d.create_resource_object("window", client),
                                       client_type=self._net_active, data=(32, [2, X.CurrentTime, 0, 0, 0]))
            self.root.send_event(ask, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask)
            self.d.flush()
            deadline = time.monotonic() + _FOCUS_WAIT
            while self._active() != client and time.monotonic() < deadline:
                self._wait_event(deadline)  # openbox announces the change with a PropertyNotify
        except xerror.XError:  # the window went away meanwhile
            self._clients.clear()
            self._active_stale = True

    def _inside(self, client: Window, root_x: int, root_y: int) -> bool:
        """Whether the pointer is on the client window itself, not on its frame's decoration. A
        click on a titlebar, border or button is openbox's own (apps.py binds them: a press there
        focuses and raises, the iconify button iconifies): a focus call after it would undo an
        iconify, since activating an iconic window maps it again."""
        at = client.translate_coords(self.root, root_x, root_y)
        geo = client.get_geometry()
        return 0 <= at.x < geo.width and 0 <= at.y < geo.height

    def _iconic(self, client: Window) -> bool:
        """WM_STATE says iconic (minimised): never activate it, which would map it again."""
        state = client.get_full_property(self._wm_state, X.AnyPropertyType)
        return state is not None and len(state.value) > 0 and int(state.value[0]) == _ICONIC_STATE

    # -- pointer ------------------------------------------------------------------------
    def _motion(self, x: float, y: float) -> None:
        xtest.fake_input(self.d, X.MotionNotify, x=round(x), y=round(y))

    def move(self, x: float, y: float) -> None:
        self._motion(x, y)
        self._send()

    def _press(self, b: int) -> None:
        now = time.monotonic()
        delay = _PRESS_GAP_MS if now - self._last_press < _PRESS_RECENT else 0
        xtest.fake_input(self.d, X.ButtonPress, b, time=delay)  # (``time`` is XTest's delay in ms)
        self._last_press = now

    def click(self, x: float, y: float, button: str, count: int) -> bool:
        """Only sends (the X server spaces the clicks of a double click: _PRESS_GAP_MS).
        Whether the clicked window is known to have the focus (else: focus_under_pointer)."""
        b = BUTTONS[button]
        self._motion(x, y)
        for _ in range(count):
            self._press(b)
            xtest.fake_input(self.d, X.ButtonRelease, b)
        self._send()
        return self.focus_known(x, y)

    def button(self, x: float | None, y: float | None, button: str, down: bool) -> bool:
        """Press or release; as ``click``, whether no focus call is needed after it."""
        if x is not None and y is not None:
            self._motion(x, y)
        if down:
            self._press(BUTTONS[button])
        else:
            xtest.fake_input(self.d, X.ButtonRelease, BUTTONS[button])
        self._send()
        if not down:
            return True
        return x is not None and y is not None and self.focus_known(x, y)

    def drag(self, path: list[tuple[float, float]], button: str) -> None:
        b = BUTTONS[button]
        (x, y), rest = path[0], path[1:]
        self._motion(x, y)
        self._send()
        if not self.focus_known(x, y):  # before the press: the window the drag starts on
            self.focus_under_pointer()
        self._press(b)
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
        self._send()

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
        self._send()
