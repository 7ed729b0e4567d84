"""The X keyboard map: which keycode types a keysym, and spare keycodes for the rest.

Characters the map cannot type (``é``, ``ж``, ``F13``…) get a spare keycode:
an empty one or a vendor media key (XF86*), which nobody has on a virtual
desktop. Two things make that reliable:

* Clients do not all re-read the map when it changes. Chromium reads it once
  and then only on an XKB NewKeyboardNotify, which the server sends when key
  events start coming from another keyboard device. So after a change one key
  event is sent from Xvfb's own keyboard (on a keycode this connection grabs,
  so no window sees it); the next XTest key switches back, and every client
  reloads the map before it sees that key.
* A mapping is not restored right after its key press: a client that handles
  the change notice after the restore would decode the key with the old map
  (xdotool's "wrong character" race). Spare keycodes are reused least recently
  used first, and never within ``REUSE_AFTER`` of their last press.

Blocking code for the desktop's X thread, like everything using the connection.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from Xlib import X
from Xlib.display import Display
from Xlib.ext import xinput
from Xlib.protocol import rq

REUSE_AFTER = 0.15  # seconds before a spare keycode may be given another keysym
_XI_DEVICE_KEY_PRESS, _XI_DEVICE_KEY_RELEASE = 1, 2  # XInput 1 event offsets


class _DeviceFakeInput(rq.Request):
    """XTest FakeInput with the device id python-xlib leaves out (an XInput 1 device event)."""

    _request = rq.Struct(
        rq.Card8("opcode"), rq.Opcode(2), rq.RequestLength(),
        rq.Card8("event_type"), rq.Card8("detail"), rq.Pad(2), rq.Card32("time"), rq.Window("root", (X.NONE,)),
        rq.Pad(8), rq.Int16("x"), rq.Int16("y"), rq.Pad(7), rq.Card8("deviceid"),
    )


class NoSpareKeycode(RuntimeError):
    pass


class KeyMap:
    def __init__(self, display: Display, on_event: Callable[[object], None] | None = None) -> None:
        self.d = display
        self._on_event = on_event  # gets the other events this class reads off the connection
        self._where: dict[int, tuple[int, int]] = {}  # keysym -> (keycode, level 0 or 1)
        self._spare: OrderedDict[int, float] = OrderedDict()  # keycode -> last press; LRU first
        self._load()
        self._bounce_key, self._bounce_device = self._bounce_setup()
        self._xtest = display.display.get_extension_major("XTEST")
        self._xi_base = display.query_extension("XInputExtension").first_event if self._bounce_device else 0
        self._stale = False  # a mapping changed and clients have not been told yet

    def _load(self) -> None:
        info = self.d.display.info
        first, count = info.min_keycode, info.max_keycode - info.min_keycode + 1
        for i, row in enumerate(self.d.get_keyboard_mapping(first, count)):
            keycode = first + i
            if keycode > 8 and all(sym == 0 or 0x1008FF00 <= sym <= 0x1008FFFF for sym in row):
                self._spare[keycode] = 0.0
                continue
            for level, sym in enumerate(row[:2]):
                if sym and sym not in self._where:
                    self._where[sym] = (keycode, level)

    def _bounce_setup(self) -> tuple[int, int | None]:
        """A spare keycode grabbed by this connection, and Xvfb's own keyboard device."""
        keycode = next(reversed(self._spare))
        del self._spare[keycode]
        self.d.screen().root.grab_key(keycode, X.AnyModifier, False, X.GrabModeAsync, X.GrabModeAsync)
        device = None
        if self.d.has_extension("XInputExtension"):
            for dev in self.d.xinput_query_device(xinput.AllDevices).devices:
                if dev.use == xinput.SlaveKeyboard and "XTEST" not in str(dev.name):
                    device = dev.deviceid
                    break
        return keycode, device

    def ready(self, keysyms: Iterable[int]) -> bool:
        """Whether every keysym has a keycode and clients know the map: typing them only sends."""
        return not self._stale and all(k in self._where for k in keysyms)

    def keycode(self, keysym: int) -> tuple[int, int] | None:
        return self._where.get(keysym)

    def prepare(self, keysyms: Iterable[int]) -> None:
        """Give keycodes to the keysyms that have none, as many at once as there are spares."""
        missing = [k for k in dict.fromkeys(keysyms) if k not in self._where]
        for keysym in missing[: len(self._spare)]:
            self._assign(keysym)

    def locate(self, keysym: int) -> tuple[int, int]:
        """(keycode, level) that types ``keysym``; clients know the mapping by the next key event."""
        found = self._where.get(keysym)
        if found is None:
            found = self._assign(keysym)
        if self._stale:
            self._announce()
        return found

    def _assign(self, keysym: int) -> tuple[int, int]:
        if not self._spare:
            raise NoSpareKeycode("no spare keycode left to type this character")
        keycode, last = next(iter(self._spare.items()))
        wait = last + REUSE_AFTER - time.monotonic()
        if wait > 0:
            self.d.sync()
            time.sleep(wait)
        for sym, (code, _level) in list(self._where.items()):
            if code == keycode:
                del self._where[sym]
        self.d.change_keyboard_mapping(keycode, [(keysym, keysym)])
        self._where[keysym] = (keycode, 0)
        self._spare.move_to_end(keycode)
        self._stale = True
        return keycode, 0

    def _announce(self) -> None:
        """Make every client reload the map: one grabbed key event from the other keyboard."""
        self._stale = False
        if self._bounce_device is None:
            return
        for offset in (_XI_DEVICE_KEY_PRESS, _XI_DEVICE_KEY_RELEASE):
            _DeviceFakeInput(display=self.d.display, opcode=self._xtest, event_type=self._xi_base + offset,
                             detail=self._bounce_key, time=0, root=X.NONE, x=0, y=0,
                             deviceid=self._bounce_device)
        self.d.sync()
        while self.d.pending_events():  # the grabbed key events come to this connection: drop them
            ev = self.d.next_event()
            if self._on_event is not None:
                self._on_event(ev)

    def pressed(self, keycode: int) -> None:
        if keycode in self._spare:
            self._spare[keycode] = time.monotonic()
            self._spare.move_to_end(keycode)
