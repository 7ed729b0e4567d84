"""Screen JPEGs re-encoded only where the screen was drawn on.

A frame is cut into bands of ``BAND`` rows, each encoded by simplejpeg on its
own, and joined with restart markers: the JPEG standard's own way to make parts
of one scan independent (DC prediction starts again and the bit stream is
byte-aligned at each marker; the restart interval is one band's MCUs). With the
same quality and subsampling every band has the same tables, so the joined frame
decodes to exactly the pixels one encode of the whole screen gives (the tests
check this), at about the same size.

What it buys: when XDAMAGE says only some rows were drawn on since the last
frame, only their bands are encoded again. A blinking caret, a spinner or a
small window repainted costs a band or two instead of the whole screen; a
screen that changed everywhere costs a little more than one whole encode.

If simplejpeg ever writes something this does not expect (other tables in one
band, a frame type or markers it does not know), the encoder says so once and
encodes whole frames from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy
import simplejpeg

log = logging.getLogger(__name__)

BAND = 32  # rows per band: two 4:2:0 MCU rows, so a band never splits an MCU
_MCU = 16  # an MCU's width and height with 4:2:0
_SOF0, _SOS = 0xC0, 0xDA
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
_NOT_BASELINE = {0xC1, 0xC2, 0xC3, 0xDD}  # other frame types; restarts of the band's own
_RESTART = [bytes((0xFF, 0xD0 + n)) for n in range(8)]  # RST0..RST7, in turn


class BandError(ValueError):
    """A band's JPEG is not laid out as this module expects."""


def split_band(jpeg: bytes) -> tuple[bytes, int, int, bytes]:
    """(headers from SOI to the end of SOS, where SOF0's height and SOS are in them, and the
    entropy-coded data)."""
    i, height_at = 2, -1
    if not (jpeg.startswith(_SOI) and jpeg.endswith(_EOI)):
        raise BandError("a band's JPEG does not start with SOI and end with EOI")
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF:
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2:i + 4], "big")
        if marker in _NOT_BASELINE:
            break
        if marker == _SOF0:
            height_at = i + 5  # FF C0, length (2), precision (1), then the height (2)
        elif marker == _SOS:
            if height_at < 0:
                break
            start = i + 2 + length
            return jpeg[:start], height_at, i, jpeg[start:-2]
        i += 2 + length
    raise BandError("a band's JPEG is not one baseline frame with one scan")


class BandedJpeg:
    """One screen's frames; not thread-safe (it lives on the desktop's X thread)."""

    def __init__(self) -> None:
        self._key: tuple[int, int, int] | None = None  # (width, height, quality) the bands are of
        self._bands: list[bytes] = []  # each band's entropy-coded data
        self._tables = b""  # band 0's headers, its height zeroed: every band must have these
        self._header = b""  # the whole frame's headers, with its height and restart interval
        self.enabled = True

    def encode(self, pixels: numpy.ndarray, quality: int,
               drawn: Sequence[tuple[int, int]] | None = None) -> bytes:
        """The JPEG of ``pixels`` (h, w, 4: BGRA). ``drawn``: the (top, rows) spans drawn on since
        the last call with this size and quality; None when not known (every band is encoded)."""
        if not self.enabled:
            return _whole(pixels, quality)
        h, w = pixels.shape[:2]
        count = -(-h // BAND)
        key = (w, h, quality)
        todo = self._todo(w, h, quality, drawn)
        if key != self._key or drawn is None:
            self._key, self._bands = None, [b""] * count
        try:
            for b in todo:
                self._bands[b] = self._band(pixels, b, quality, w, h)
        except BandError as exc:
            log.warning("screen JPEGs are encoded whole from now on: %s", exc)
            self.enabled, self._key = False, None
            return _whole(pixels, quality)
        self._key = key
        parts = [self._header, self._bands[0]]
        for b in range(1, count):
            parts.append(_RESTART[(b - 1) % 8])
            parts.append(self._bands[b])
        parts.append(_EOI)
        return b"".join(parts)

    def rows_needed(self, w: int, h: int, quality: int, drawn: Sequence[tuple[int, int]] | None) -> tuple[int, int]:
        """(top, bottom): the rows of the next frame ``encode`` will read, given the same arguments;
        the others may hold anything. (0, 0) when it reads none."""
        todo = self._todo(w, h, quality, drawn)
        if not todo:
            return 0, 0
        return todo[0] * BAND, min(h, (todo[-1] + 1) * BAND)

    def _todo(self, w: int, h: int, quality: int, drawn: Sequence[tuple[int, int]] | None) -> list[int]:
        """The bands to encode, in order: all of them unless the frame's size and quality are those
        of the bands kept and what was drawn is known."""
        count = -(-h // BAND)
        if not self.enabled or (w, h, quality) != self._key or drawn is None:
            return list(range(count))
        return sorted({b for top, rows in drawn if rows > 0
                       for b in range(max(0, top // BAND), min(count, (top + rows - 1) // BAND + 1))})

    def _band(self, pixels: numpy.ndarray, b: int, quality: int, w: int, h: int) -> bytes:
        head, height_at, sos, data = split_band(_whole(pixels[b * BAND:(b + 1) * BAND], quality))
        tables = head[:height_at] + b"\0\0" + head[height_at + 2:]
        if b == 0:  # (a new frame size or quality always starts at band 0)
            self._tables = tables
            interval = -(-w // _MCU) * (BAND // _MCU)  # MCUs per band
            self._header = (head[:height_at] + h.to_bytes(2, "big") + head[height_at + 2:sos]
                            + b"\xff\xdd\x00\x04" + interval.to_bytes(2, "big") + head[sos:])
        elif tables != self._tables:
            raise BandError("a band was encoded with other tables than the first")
        return data

    def forget(self) -> None:
        """Forget the bands: the next frame is encoded whole."""
        self._key = None


def _whole(pixels: numpy.ndarray, quality: int) -> bytes:
    return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="BGRA",
                                  colorsubsampling="420", fastdct=True)
