"""Screenshots sized for MCP clients, and the pixel mapping that goes with them.

Clients refuse large results (Claude Desktop: 1 MiB per tool result; the Claude API: images over
2000 px a side when many are sent), so the image a model sees is the computer's screenshot scaled
to at most ``max_side`` on its longest side. The scale is a pure function of the screen's size and
the server's setting, never of an MCP session (the 2026-07-28 protocol has none): every pointer
tool maps the x, y a model read off the image back to screen pixels with the same function.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from opencone.drivers.base import Display

MAX_IMAGE_BYTES = 700 * 1024  # base64 makes this ~0.93 MiB: under Claude Desktop's 1 MiB per result
_QUALITIES = (75, 60, 45, 30)  # tried in turn until the image fits


def scale_for(display: Display, max_side: int) -> float:
    """The factor screen pixels are multiplied by to give image pixels (1 when the screen fits)."""
    longest = max(display.pixel_width, display.pixel_height)
    return 1.0 if longest <= max_side else max_side / longest


def to_screen(value: float, scale: float) -> float:
    """An image coordinate as a screen pixel."""
    return value / scale


@dataclass(frozen=True, slots=True)
class Fitted:
    jpeg: bytes
    width: int
    height: int
    scale: float


def fit(jpeg: bytes, display: Display, max_side: int) -> Fitted:
    """``jpeg`` (a full-size screenshot) scaled by ``scale_for`` and re-encoded within MAX_IMAGE_BYTES.
    CPU work: call it off the event loop."""
    scale = scale_for(display, max_side)
    if scale == 1.0 and len(jpeg) <= MAX_IMAGE_BYTES:  # as it is: the screenshot is the screen's size
        return Fitted(jpeg, display.pixel_width, display.pixel_height, 1.0)
    with Image.open(io.BytesIO(jpeg)) as im:
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im.draft("RGB", size)  # let libjpeg decode at 1/2, 1/4 ... of the size when that is enough
        small = im.convert("RGB").resize(size, Image.Resampling.LANCZOS) if im.size != size else im.convert("RGB")
    data = b""
    for quality in _QUALITIES:
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=quality)
        data = buf.getvalue()
        if len(data) <= MAX_IMAGE_BYTES:
            break
    return Fitted(data, size[0], size[1], scale)
