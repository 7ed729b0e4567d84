"""The mouse pointer drawn into a video picture (yuv420p), for desktop recordings.

An X screen grab holds no pointer (the X server draws it apart from the screen's pixels), so a
desktop's video would show clicks landing with no pointer anywhere. The screencast reports the
pointer's position beside its frames; a recording draws this arrow there: a black outline, a
white fill and neutral chroma under it, so it reads on any background.
"""

from __future__ import annotations

import av
import numpy

# the classic arrow, its tip (the hotspot) at the top left: '#' outline, '.' fill
_ARROW = (
    "#",
    "##",
    "#.#",
    "#..#",
    "#...#",
    "#....#",
    "#.....#",
    "#......#",
    "#.......#",
    "#........#",
    "#.........#",
    "#......####",
    "#...#..#",
    "#..##..#",
    "#.#  #..#",
    "##   #..#",
    "#     #..#",
    "      #..#",
    "       ##",
)
_W = max(len(row) for row in _ARROW)
_OUTLINE = numpy.array([[c == "#" for c in row.ljust(_W)] for row in _ARROW])
_FILL = numpy.array([[c == "." for c in row.ljust(_W)] for row in _ARROW])
BLACK, WHITE, NEUTRAL = 16, 235, 128  # video-range luma, and chroma without colour


def draw_pointer(picture: av.VideoFrame, x: int, y: int) -> None:
    """The arrow into ``picture`` (yuv420p, changed in place) with its tip at ``x``, ``y``."""
    luma = picture.planes[0]
    h, w = luma.height, luma.width
    if x >= w or y >= h or x < 0 or y < 0:
        return
    rows, cols = min(_OUTLINE.shape[0], h - y), min(_OUTLINE.shape[1], w - x)
    outline, fill = _OUTLINE[:rows, :cols], _FILL[:rows, :cols]
    ys = numpy.frombuffer(luma, numpy.uint8).reshape(h, luma.line_size)
    region = ys[y:y + rows, x:x + cols]
    region[outline] = BLACK
    region[fill] = WHITE
    # chroma: a sample covers 2×2 pixels; neutral wherever the arrow covers any of them
    cover = outline | fill
    cy0, cx0 = y // 2, x // 2
    crows, ccols = (y + rows - 1) // 2 - cy0 + 1, (x + cols - 1) // 2 - cx0 + 1
    sub = numpy.zeros((crows, ccols), bool)
    for dy in range(rows):
        row = (y + dy) // 2 - cy0
        numpy.logical_or.at(sub[row], (x + numpy.nonzero(cover[dy])[0]) // 2 - cx0, True)
    for plane in picture.planes[1:3]:
        cs = numpy.frombuffer(plane, numpy.uint8).reshape(plane.height, plane.line_size)
        block = cs[cy0:cy0 + crows, cx0:cx0 + ccols]
        block[sub[:block.shape[0], :block.shape[1]]] = NEUTRAL
