"""The X screen: JPEG frames straight from the server, and its size.

Frames come from mss's XShm backend (0.3 ms for a 1280x720 grab) and are
encoded by simplejpeg with 4:2:0 and the fast DCT (about 4 ms in all), as the
raw-cost notes measured. Like XInput, this is blocking code for the X thread.

mss copies every frame out of its shared-memory segment into a new bytearray
(3 MiB at 1024x768: about 0.3 ms, holding the GIL). Where its XShm backend is
in use, the frame is encoded straight from the segment instead: the X server
writes it only during the next GetImage, which this thread itself sends. Any
other backend, or an mss whose internals differ, takes the public ``grab``.

A screen nothing was drawn on since the last screenshot (XDAMAGE says so, in one
round trip on the desktop's own connection: damage.py) gives that screenshot's JPEG
again, without grabbing or encoding: agents often look twice at a screen that has
not moved. That round trip also means the input sent before it on the same
connection has been processed when the screen is grabbed. When something was
drawn, the check says which rows, and only the bands of the JPEG they fall in
are grabbed and encoded again (stripjpeg.py).

Xvfb's RandR lets the screen shrink and grow back up to the size Xvfb was
started with, so desktops start with a large framebuffer and are then set to
the size asked for.
"""

from __future__ import annotations

import logging
from typing import Any

import mss
import numpy
from Xlib.display import Display
from Xlib.ext import randr

from opencone.drivers.desktop.damage import DamageCheck
from opencone.drivers.desktop.stripjpeg import BandedJpeg

log = logging.getLogger(__name__)

try:  # mss internals, for the copy-free path; without them every frame takes mss.grab
    from mss.linux import xcb as _xcb
    from mss.linux.base import ALL_PLANES as _ALL_PLANES
    from mss.linux.xshmgetimage import MSSImplXShmGetImage as _XShmImpl
    from mss.linux.xshmgetimage import ShmStatus as _ShmStatus
except ImportError:  # pragma: no cover - another mss layout
    _XShmImpl = None


class ScreenSizeError(ValueError):
    pass


class Screen:
    def __init__(self, display: Display, name: str) -> None:
        self.d = display
        self.name = name
        self.root = display.screen().root
        limits = self.root.xrandr_get_screen_size_range()
        self.max_width, self.max_height = limits.max_width, limits.max_height
        geo = self.root.get_geometry()
        self.width, self.height = geo.width, geo.height
        self._mss: mss.MSS | None = None
        self._zero_copy = _XShmImpl is not None
        self._changes = _damage_check(display)
        self._frames = BandedJpeg()
        self._last: tuple[tuple[int, int, int], bytes] | None = None  # ((width, height, quality), JPEG)

    def _grabber(self) -> mss.MSS:
        # mss sizes its shared-memory buffer for the root at creation: make it while the
        # screen has its largest size, or again after it grew
        if self._mss is None:
            self._mss = mss.MSS(display=self.name)
        return self._mss

    @property
    def round_trips(self) -> bool:
        """Whether ``jpeg`` makes a round trip on the display's connection before it grabs."""
        return self._changes is not None

    def jpeg(self, quality: int) -> bytes:
        w, h = self.width, self.height
        key = (w, h, quality)
        drawn = self._changes.take() if self._changes is not None else None
        if drawn == [] and self._last is not None and self._last[0] == key:
            return self._last[1]
        try:
            data = self._encode(w, h, quality, drawn)
        except BaseException:
            # the damage taken is gone: what was drawn there must not be answered from the old frame
            self._last = None
            self._frames.forget()
            raise
        self._last = (key, data)
        return data

    def _encode(self, w: int, h: int, quality: int, drawn: list[tuple[int, int]] | None) -> bytes:
        """``drawn``: the row spans drawn on since the last grab (None: not known)."""
        grabber = self._grabber()
        pixels = self._shared_frame(grabber, w, h, self._frames.rows_needed(w, h, quality, drawn))
        if pixels is None:
            shot = grabber.grab({"left": 0, "top": 0, "width": w, "height": h})
            pixels = numpy.frombuffer(shot.raw, numpy.uint8).reshape(h, w, 4)
        try:
            return self._frames.encode(pixels, quality, drawn)
        finally:
            del pixels  # a view of the shared segment must be gone before mss may close it

    def _shared_frame(self, grabber: mss.MSS, w: int, h: int, rows: tuple[int, int]) -> numpy.ndarray | None:
        """The screen as a (h, w, 4) view of mss's shared-memory segment, or None to use ``grab``.
        Only the ``rows`` (top, bottom) the encoder will read are fetched; the others keep what an
        earlier grab left there (the encoder keeps their JPEG bands from it).

        Only once mss itself has seen XShmGetImage work (its first grab), so its
        checks and its fallback to XGetImage stay in charge of odd servers.
        """
        if not self._zero_copy:
            return None
        impl: Any = getattr(grabber, "_impl", None)
        try:
            if (not isinstance(impl, _XShmImpl) or impl.shm_status is not _ShmStatus.AVAILABLE
                    or impl._buf is None or w * h * 4 > impl._bufsize):
                return None
            top, bottom = rows
            if bottom > top:
                with grabber._lock:  # type: ignore[attr-defined]
                    # rows land where a whole grab puts them: the offset of row ``top``
                    _xcb.shm_get_image(impl.conn, impl.drawable, 0, top, w, bottom - top, _ALL_PLANES,
                                       _xcb.ImageFormat.ZPixmap, impl._shmseg, top * w * 4)
            return numpy.frombuffer(impl._buf, numpy.uint8, count=w * h * 4).reshape(h, w, 4)
        except _xcb.XError:
            raise  # the server refused: as grab would
        except Exception as exc:  # mss internals not as expected: stay on the public path
            log.info("copy-free screen grab disabled: %r", exc)
            self._zero_copy = False
            return None

    def resize(self, width: int, height: int) -> None:
        if (width, height) == (self.width, self.height):
            return
        if not (1 <= width <= self.max_width and 1 <= height <= self.max_height):
            raise ScreenSizeError(
                f"this desktop's screen can be at most {self.max_width}x{self.max_height}; "
                f"{width}x{height} does not fit (create a new desktop with that display size)"
            )
        res = self.root.xrandr_get_screen_resources()
        output, crtc = res.outputs[0], res.crtcs[0]
        mode = self._mode(res, output, width, height)
        # mm sizes at 96 dpi, so applications keep their usual scale
        mm_w, mm_h = round(width * 25.4 / 96), round(height * 25.4 / 96)
        # the screen must hold the CRTC at every step: grow it first, shrink it last
        interim = (max(width, self.width), max(height, self.height))
        if interim != (self.width, self.height):
            self.root.xrandr_set_screen_size(*interim, mm_w, mm_h)
        self.d.xrandr_set_crtc_config(crtc, res.config_timestamp, 0, 0, mode, randr.Rotate_0, [output])
        if interim != (width, height):
            self.root.xrandr_set_screen_size(width, height, mm_w, mm_h)
        self.d.sync()
        grew = width > self.width or height > self.height
        self.width, self.height = width, height
        if grew and self._mss is not None:
            self._mss.close()
            self._mss = None

    def _mode(self, res: object, output: int, width: int, height: int) -> int:
        for m in res.modes:  # type: ignore[attr-defined]
            if (m.width, m.height) == (width, height):
                mode_id = m.id
                break
        else:
            name = f"{width}x{height}"
            info = {"id": 0, "width": width, "height": height, "dot_clock": 60 * width * height,
                    "h_sync_start": width, "h_sync_end": width, "h_total": width, "h_skew": 0,
                    "v_sync_start": height, "v_sync_end": height, "v_total": height,
                    "name_length": len(name), "flags": 0}
            mode_id = self.root.xrandr_create_mode(info, name).mode
        info = self.d.xrandr_get_output_info(output, res.config_timestamp)
        if mode_id not in info.modes:
            self.d.xrandr_add_output_mode(output, mode_id)
        return mode_id

    def close(self) -> None:
        if self._mss is not None:
            self._mss.close()
            self._mss = None
        if self._changes is not None:
            self._changes.close()
            self._changes = None


def _damage_check(display: Display) -> DamageCheck | None:
    try:
        return DamageCheck(display)
    except Exception as exc:  # an X server without XDAMAGE or XFixes: every screenshot is grabbed
        log.info("no XDAMAGE on %s, screenshots are not reused: %r", display.get_display_name(), exc)
        return None
