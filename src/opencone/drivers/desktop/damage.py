"""Whether anything was drawn on an X screen since the last look (XDAMAGE).

One damage object on the root window, on an X connection of its own, reporting
only when its region goes from empty to non-empty: one ``DamageNotify`` per
change, however much is drawn. Taking the change empties the region again
(``DamageSubtract``), so the next drawing reports anew. Blocking code for the
desktop's X thread, like the rest of the desktop driver.
"""

from __future__ import annotations

import contextlib

from Xlib.display import Display as XDisplay
from Xlib.ext import damage


class DamageWatch:
    def __init__(self, name: str) -> None:
        self.display = XDisplay(name)
        root = self.display.screen().root
        self.display.damage_query_version()  # the extension wants its version asked before use
        self.damage = root.damage_create(damage.DamageReportNonEmpty)
        self.display.sync()

    def take(self, exact: bool = False) -> bool:
        """True when something was drawn since the last take that said so; re-arms the watch.

        ``exact``: first a round trip, so every drawing the server did before this call
        counts; and on a change the re-arming is done before returning, so a grab the
        caller then makes on another connection cannot come before it (drawing during
        that grab reports again). Without it, a change still on its way counts next time.
        """
        if exact:
            self.display.sync()
        drawn = False
        while self.display.pending_events():  # only DamageNotify is selected on this connection
            self.display.next_event()
            drawn = True
        if drawn:
            self.display.damage_subtract(self.damage, 0, 0)
            if exact:
                self.display.sync()
            else:
                self.display.flush()
        return drawn

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.display.damage_destroy(self.damage)
            self.display.close()
