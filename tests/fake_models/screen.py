"""What the fake models see: images decoded from what a request carried, and the agent form's
coloured targets found in them.

``tests/pages/agent_form.html`` paints each target in a colour of its own, and its field
changes colour with its state, so a policy can read the page's state from pixels alone:
the same screen a real model would be shown, decoded from the bytes the request carried.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass, field

import numpy

# RGB of each target on tests/pages/agent_form.html (keep the page's CSS in step)
PALETTE: dict[str, tuple[int, int, int]] = {
    "field_idle": (40, 40, 255),      # the text field, neither focused nor filled (not Chromium's #1a73e8)
    "field_focused": (255, 180, 0),   # focused and empty
    "field_filled": (0, 200, 200),    # holds text
    "submit": (224, 30, 30),          # the submit button
    "submitted": (30, 180, 30),       # the banner shown once the form was submitted
}
TOLERANCE = 48      # per channel: survives JPEG at any usual quality, 4:2:0 included
STRIDE = 2          # every second pixel of every second row is looked at
MIN_PIXELS = 150    # a target smaller than this (in full-size pixels) is noise, not a target


class ImageError(ValueError):
    """The bytes are no image the fake can decode."""


@dataclass(frozen=True)
class Image:
    """A decoded image: RGB pixels, and where they came from (for the request log)."""

    pixels: numpy.ndarray  # (h, w, 3) uint8
    format: str            # "jpeg" | "png" | …
    size_bytes: int
    sha1: str

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def describe(self) -> dict[str, object]:
        return {"w": self.width, "h": self.height, "format": self.format, "bytes": self.size_bytes,
                "sha1": self.sha1}


def decode_data_url(url: str) -> Image:
    """A ``data:image/…;base64,…`` URL decoded. Anything else (an http URL above all) is an
    ImageError: a real provider could not fetch our loopback either."""
    if not url.startswith("data:"):
        raise ImageError(f"not a data URL: {url[:80]!r}")
    head, _, payload = url.partition(",")
    if ";base64" not in head:
        raise ImageError("data URL is not base64")
    return decode_base64(payload)


def decode_base64(payload: str) -> Image:
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"bad base64: {exc}") from None
    return decode_bytes(data)


def decode_bytes(data: bytes) -> Image:
    sha1 = hashlib.sha1(data).hexdigest()
    if data[:2] == b"\xff\xd8":
        import simplejpeg

        try:
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError as exc:
            raise ImageError(f"bad JPEG: {exc}") from None
        return Image(pixels, "jpeg", len(data), sha1)
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:4] in (b"RIFF", b"GIF8"):
        from PIL import Image as PILImage  # only when a PNG (or WebP, GIF) arrives

        try:
            with PILImage.open(io.BytesIO(data)) as img:
                pixels = numpy.asarray(img.convert("RGB"))
                fmt = (img.format or "png").lower()
        except Exception as exc:  # Pillow raises many kinds for broken files
            raise ImageError(f"bad image: {exc}") from None
        return Image(pixels, fmt, len(data), sha1)
    raise ImageError(f"unknown image format (first bytes {data[:8]!r})")


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a JPEG's SOF or a PNG's IHDR, without decoding (the fast mode)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    return None


@dataclass(frozen=True)
class Blob:
    """One coloured target: its centre and extent in image pixels."""

    name: str
    cx: float
    cy: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)
    pixels: int

    def describe(self) -> dict[str, object]:
        return {"center": [round(self.cx, 1), round(self.cy, 1)], "box": list(self.box)}


@dataclass
class Screen:
    """The targets found on one image."""

    width: int
    height: int
    blobs: dict[str, Blob] = field(default_factory=dict)

    @property
    def field(self) -> Blob | None:
        for state in ("field_filled", "field_focused", "field_idle"):
            if state in self.blobs:
                return self.blobs[state]
        return None

    @property
    def field_state(self) -> str | None:
        """``idle`` | ``focused`` | ``filled``, or None when no field is on the screen."""
        blob = self.field
        return blob.name.removeprefix("field_") if blob else None

    def describe(self) -> dict[str, object]:
        return {"size": [self.width, self.height], **{n: b.describe() for n, b in self.blobs.items()}}


def _channel_tables() -> list[numpy.ndarray]:
    """Per channel, for each value 0-255, a bit per palette colour whose channel is within the
    tolerance: three table look-ups and two ANDs then say which colour each pixel is near."""
    values = numpy.arange(256)
    tables = []
    for channel in range(3):
        table = numpy.zeros(256, numpy.uint8)
        for bit, rgb in enumerate(PALETTE.values()):
            table |= ((numpy.abs(values - rgb[channel]) <= TOLERANCE) << bit).astype(numpy.uint8)
        tables.append(table)
    return tables


_TABLES = _channel_tables()


def find_targets(pixels: numpy.ndarray) -> Screen:
    """Every palette colour present on the image, with its extent.

    A colour's target is its densest band of rows (rows holding at least a third of its
    densest row, contiguous, the band of most pixels), then the same for columns within that
    band: so stray pixels of the same hue elsewhere (JPEG ringing, a focus ring or an icon in
    the browser's own toolbar) neither count nor stretch it."""
    h, w = pixels.shape[:2]
    small = pixels[::STRIDE, ::STRIDE]
    near = _TABLES[0][small[..., 0]] & _TABLES[1][small[..., 1]] & _TABLES[2][small[..., 2]]
    present = int(numpy.bitwise_or.reduce(near, axis=None))
    screen = Screen(w, h)
    for bit, name in enumerate(PALETTE):
        if not present & (1 << bit):
            continue
        mask = (near & (1 << bit)) != 0
        y0, y1 = _densest_band(mask.sum(axis=1))
        band = mask[y0:y1 + 1]
        x0, x1 = _densest_band(band.sum(axis=0))
        count = int(band[:, x0:x1 + 1].sum())
        if count * STRIDE * STRIDE < MIN_PIXELS:
            continue
        box = (x0 * STRIDE, y0 * STRIDE, min(x1 * STRIDE + STRIDE - 1, w - 1), min(y1 * STRIDE + STRIDE - 1, h - 1))
        screen.blobs[name] = Blob(name, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box, count * STRIDE * STRIDE)
    return screen


def _densest_band(counts: numpy.ndarray) -> tuple[int, int]:
    """First and last index of the contiguous run of dense entries (>= a third of the
    largest) that holds the most."""
    dense = counts >= max(1, int(counts.max()) // 3)
    edges = numpy.diff(numpy.concatenate(([0], dense.view(numpy.int8), [0])))
    starts, ends = numpy.nonzero(edges == 1)[0], numpy.nonzero(edges == -1)[0]
    masses = [int(counts[a:b].sum()) for a, b in zip(starts, ends, strict=True)]
    best = int(numpy.argmax(masses))
    return int(starts[best]), int(ends[best]) - 1
