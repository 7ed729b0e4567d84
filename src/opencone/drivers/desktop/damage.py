"""Whether anything was drawn on an X screen since the last look (XDAMAGE).

Two ways to ask, both with one damage object on the root window:

- ``DamageWatch`` (the screencast): on an X connection of its own, reporting only
  when its region goes from empty to non-empty, so one ``DamageNotify`` per change
  however much is drawn; a poll reads those events without waiting for the server.
- ``DamageCheck`` (screenshots): one round trip on a connection shared with other
  work. ``DamageSubtract`` moves the damage into an XFixes region and empties it in
  one step; ``FetchRegion``'s reply lists that region's rectangles. When the
  reply arrives, every request sent on that connection before (the desktop's input)
  has been processed, and whatever is drawn after the reset counts next time.

Blocking code for the desktop's X thread, like the rest of the desktop driver.
python-xlib 0.33 has XDAMAGE but not XFixes regions: the two region requests are
defined here from the XFixes protocol (CreateRegion is request 5, DestroyRegion 10,
FetchRegion 19).
"""

from __future__ import annotations

import contextlib

from Xlib.display import Display as XDisplay
from Xlib.ext import damage
from Xlib.protocol import rq, structs


class _CreateRegion(rq.Request):
    _request = rq.Struct(rq.Card8("opcode"), rq.Opcode(5), rq.RequestLength(), rq.Card32("region"),
                         rq.List("rectangles", structs.Rectangle))


class _DestroyRegion(rq.Request):
    _request = rq.Struct(rq.Card8("opcode"), rq.Opcode(10), rq.RequestLength(), rq.Card32("region"))


class _FetchRegion(rq.ReplyRequest):
    _request = rq.Struct(rq.Card8("opcode"), rq.Opcode(19), rq.RequestLength(), rq.Card32("region"))
    _reply = rq.Struct(rq.ReplyCode(), rq.Pad(1), rq.Card16("sequence_number"), rq.ReplyLength(),
                       rq.Object("extents", structs.Rectangle), rq.Pad(16),
                       rq.List("rectangles", structs.Rectangle))


class DamageWatch:
    def __init__(self, name: str) -> None:
        self.display = XDisplay(name)
        root = self.display.screen().root
        self.display.damage_query_version()  # the extension wants its version asked before use
        self.damage = root.damage_create(damage.DamageReportNonEmpty)
        self.display.sync()

    def take(self) -> bool:
        """True when something was drawn since the last take that said so; re-arms the watch.

        Without a round trip: a change still on its way counts next time. The re-arming is
        only sent, so a caller that grabs on another connection makes a round trip first.
        """
        drawn = False
        while self.display.pending_events():  # only DamageNotify is selected on this connection
            self.display.next_event()
            drawn = True
        if drawn:
            self.display.damage_subtract(self.damage, 0, 0)
            self.display.flush()
        return drawn

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.display.damage_destroy(self.damage)
            self.display.close()


class DamageCheck:
    """Drawn or not since the last ``take``, on ``display`` (which stays its owner's)."""

    def __init__(self, display: XDisplay) -> None:
        self.display = display
        display.damage_query_version()  # both extensions want their version asked before use
        display.xfixes_query_version()
        self._opcode = display.display.get_extension_major("XFIXES")
        self.region = display.display.allocate_resource_id()
        _CreateRegion(display=display.display, opcode=self._opcode, region=self.region, rectangles=[])
        self.damage = display.screen().root.damage_create(damage.DamageReportNonEmpty)
        display.sync()

    def take(self) -> list[tuple[int, int]]:
        """The (top, rows) spans drawn on since the last take (or ever, the first time);
        empty when nothing was."""
        self.display.damage_subtract(self.damage, 0, self.region)
        reply = _FetchRegion(display=self.display.display, opcode=self._opcode, region=self.region)
        return [(r.y, r.height) for r in reply.rectangles]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.display.damage_destroy(self.damage)
            _DestroyRegion(display=self.display.display, opcode=self._opcode, region=self.region)
            self.display.flush()
