"""The pointer a desktop recording draws (drivers/pointer_sprite.py): where it is told, clipped at
the picture's edges, on pictures of any size."""

from __future__ import annotations

import av
import numpy
import pytest

from opencone.drivers.pointer_sprite import BLACK, NEUTRAL, WHITE, draw_pointer


def picture(w: int, h: int) -> av.VideoFrame:
    frame = av.VideoFrame(w, h, "yuv420p")
    for i, plane in enumerate(frame.planes):
        numpy.frombuffer(plane, numpy.uint8)[:] = 60 if i == 0 else 200  # a coloured, darkish screen
    return frame


def luma(frame: av.VideoFrame) -> numpy.ndarray:
    p = frame.planes[0]
    return numpy.frombuffer(p, numpy.uint8).reshape(p.height, p.line_size)[:, :p.width]


def test_the_arrow_is_drawn_with_its_tip_at_the_point() -> None:
    frame = picture(200, 100)
    draw_pointer(frame, 50, 20)
    y = luma(frame)
    assert y[20, 50] == BLACK  # the tip
    assert y[29, 53] == WHITE  # inside the body
    assert y[19, 50] == 60 and y[20, 49] == 60 and y[29, 70] == 60  # nothing outside it
    u = frame.planes[1]
    cu = numpy.frombuffer(u, numpy.uint8).reshape(u.height, u.line_size)
    assert cu[29 // 2, 53 // 2] == NEUTRAL and cu[5, 5] == 200


@pytest.mark.parametrize(("w", "h", "x", "y"), [(101, 51, 100, 50), (101, 51, 95, 40), (64, 36, 0, 0),
                                                (7, 5, 3, 2), (200, 100, 250, 10), (200, 100, -1, 5)])
def test_at_the_edges_it_is_clipped(w: int, h: int, x: int, y: int) -> None:
    frame = picture(w, h)
    draw_pointer(frame, x, y)
    inside = 0 <= x < w and 0 <= y < h
    assert (luma(frame)[y, x] == BLACK) if inside else (luma(frame) == 60).all()
