"""The top-level windows of a desktop in stacking order, kept from X events.

A click must know which top-level window it lands on (to focus it: xinput.py).
Asking the X server (QueryPointer) is a round trip on every click; a compositor
instead keeps the stacking order from the SubstructureNotify events of the root
window, which say every create, map, unmap, move, resize, restack and destroy of
its children. This model does the same, so the window under a point is known
without asking. It is as fresh as the last event the connection read: a window
that appears at the same moment as the click is seen with the next event.
Input shapes are not modelled (a window is its rectangle), and a window whose
size is not known yet makes the answer ``UNSURE``: a caller that must be sure
asks the X server.
"""

from __future__ import annotations

from typing import Any

from Xlib import X
from Xlib import error as xerror
from Xlib.xobject.drawable import Window

UNSURE = -1  # top_at: a window of unknown size may be at the point

# what SubstructureNotify on the root reports about its children
_STACKING_EVENTS = frozenset({X.CreateNotify, X.DestroyNotify, X.MapNotify, X.UnmapNotify, X.ConfigureNotify,
                              X.ReparentNotify, X.CirculateNotify, X.GravityNotify})


def _wid(obj: Any) -> int:
    return obj if isinstance(obj, int) else int(obj.id)


class WindowStack:
    """Select ``X.SubstructureNotifyMask`` on ``root`` before creating this, and pass it every event."""

    def __init__(self, root: Window) -> None:
        self.root_id = _wid(root)
        self._order: list[int] = []  # children of the root, bottom to top
        self._rect: dict[int, tuple[int, int, int, int]] = {}  # x, y, outer width, outer height
        self._mapped: set[int] = set()
        self._unsized: set[int] = set()  # put on the root by a reparent, size unknown until configured
        for child in root.query_tree().children:  # bottom to top, as the protocol lists them
            try:
                attrs, geo = child.get_attributes(), child.get_geometry()
            except xerror.XError:  # gone meanwhile (its DestroyNotify follows)
                continue
            wid = _wid(child)
            self._order.append(wid)
            self._rect[wid] = self._outer(geo.x, geo.y, geo.width, geo.height, geo.border_width)
            if attrs.map_state != X.IsUnmapped:
                self._mapped.add(wid)

    @staticmethod
    def _outer(x: int, y: int, width: int, height: int, border: int) -> tuple[int, int, int, int]:
        return x, y, width + 2 * border, height + 2 * border

    def _remove(self, wid: int) -> None:
        if wid in self._rect:
            self._order.remove(wid)
            del self._rect[wid]
            self._mapped.discard(wid)
            self._unsized.discard(wid)

    def _on_top(self, wid: int, rect: tuple[int, int, int, int]) -> None:
        self._remove(wid)
        self._order.append(wid)
        self._rect[wid] = rect

    def _restack(self, wid: int, above: int) -> None:
        """Put ``wid`` just above sibling ``above`` (0: at the bottom)."""
        if wid not in self._rect:
            return
        self._order.remove(wid)
        index = self._order.index(above) + 1 if above in self._rect else 0
        self._order.insert(index, wid)

    def on_event(self, ev: Any) -> bool:
        """Apply ``ev`` if it is about a child of the root; whether it was."""
        kind = getattr(ev, "type", None)
        if kind not in _STACKING_EVENTS:
            return False
        if kind == X.CreateNotify:
            if _wid(ev.parent) != self.root_id:
                return False
            self._on_top(_wid(ev.window), self._outer(ev.x, ev.y, ev.width, ev.height, ev.border_width))
            return True
        if _wid(ev.event) != self.root_id:
            return False
        wid = _wid(ev.window)
        if kind == X.DestroyNotify:
            self._remove(wid)
        elif kind == X.MapNotify:
            if wid in self._rect:
                self._mapped.add(wid)
        elif kind == X.UnmapNotify:
            self._mapped.discard(wid)
        elif kind == X.ConfigureNotify:
            if wid in self._rect:
                self._rect[wid] = self._outer(ev.x, ev.y, ev.width, ev.height, ev.border_width)
                self._unsized.discard(wid)
                self._restack(wid, _wid(ev.above_sibling))
        elif kind == X.ReparentNotify:
            if _wid(ev.parent) == self.root_id:  # taken out of its frame: on top, unmapped until mapped
                self._on_top(wid, (ev.x, ev.y, 0, 0))
                self._unsized.add(wid)
            else:  # put into a frame: no longer a top-level window
                self._remove(wid)
        elif kind == X.CirculateNotify:
            if wid in self._rect:
                self._order.remove(wid)
                if ev.place == X.PlaceOnTop:
                    self._order.append(wid)
                else:
                    self._order.insert(0, wid)
        elif kind == X.GravityNotify and wid in self._rect:
            _x, _y, width, height = self._rect[wid]
            self._rect[wid] = (ev.x, ev.y, width, height)
        return True

    def top_at(self, x: float, y: float) -> int | None:
        """The topmost mapped child of the root containing (x, y), None (the root itself) or UNSURE."""
        for wid in reversed(self._order):
            if wid in self._mapped:
                if wid in self._unsized:
                    return UNSURE
                left, top, width, height = self._rect[wid]
                if left <= x < left + width and top <= y < top + height:
                    return wid
        return None

    def __contains__(self, wid: int) -> bool:
        return wid in self._rect
