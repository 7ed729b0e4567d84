"""The coordinate spaces chat VLMs answer in, over a screen of known pixels (spec §c.2).

One class for every dialect of ``chat.py``, ``chat_opencua.py`` and ``chat_json.py``: a
normalised grid (Qwen3-VL 0–1000, Northstar 0–999, our JSON dialect's ``grid1000``),
pixels of the image a Qwen2.5-VL-family processor resized (UI-TARS 1.5, OpenCUA, Qwen2.5-VL),
or the screenshot's own pixels (our JSON dialect's ``pixels``).
"""

from __future__ import annotations

import math

from opencone.agent.adapters.base import clamp_point
from opencone.core import actions as a

SCROLL_NOTCH = 100  # px per wheel notch (pyautogui's "click"), what the models count in
DEFAULT_SCROLL = 5  # notches, when a model gives no amount (spec §c.3: ≈ 500 px)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 100 * 28 * 28,
                 max_pixels: int = 16384 * 28 * 28) -> tuple[int, int]:
    """(height, width) of the image a Qwen2.5-VL-family processor (UI-TARS 1.5) shows the model:
    multiples of ``factor``, the area within bounds, the aspect ratio kept (qwen-vl-utils)."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class Space:
    """A dialect's coordinate space over the screen: ``grid`` (0–``top`` of a 1000 grid),
    ``smart`` (pixels of the smart-resized image) or ``pixels`` (the screenshot's own)."""

    def __init__(self, kind: str, display: tuple[int, int], top: int = 1000, min_pixels: int = 100 * 28 * 28) -> None:
        self.kind, self.display, self.top = kind, display, top
        w, h = display
        if kind == "smart":
            rh, rw = smart_resize(h, w, min_pixels=min_pixels)
            self.size = (rw, rh)
        elif kind == "pixels":
            self.size = display
        else:
            self.size = (1000, 1000)

    def to_px(self, x: float, y: float) -> a.Point:
        w, h = self.display
        mw, mh = self.size
        return clamp_point(float(x) * w / mw, float(y) * h / mh, self.display)

    def from_px(self, p: a.Point) -> tuple[int, int]:
        w, h = self.display
        mw, mh = self.size
        top_x = self.top if self.kind == "grid" else mw - 1
        top_y = self.top if self.kind == "grid" else mh - 1
        return (max(0, min(top_x, round(p.x * mw / w))), max(0, min(top_y, round(p.y * mh / h))))


__all__ = ["DEFAULT_SCROLL", "SCROLL_NOTCH", "Space", "smart_resize"]
