"""H.264 in MP4 from a screencast's JPEG frames, with PyAV (FFmpeg's libavcodec and libx264).

Why this shape:

- Frames come only when the screen changes, each with the time it was taken; a frame's PTS
  is that time (milliseconds since the recording started), so the video runs at variable frame
  rate and lasts as long as the session did, and a still screen costs nothing.
- The MP4 is fragmented, one fragment per frame, and every fragment goes to the file as it is
  muxed (``flush_packets``): the file on disk is a playable MP4 at any moment (a browser or
  ffprobe reads it while it grows), and a server killed mid-recording leaves one that plays up to
  its last frame but one.
- The muxer writes a frame's fragment only when the next frame comes (it needs the frame's
  duration). ``repeat(t)`` pushes the last picture out: it encodes it again at ``t`` (a
  P-frame of skipped blocks, a few hundred bytes), at stop and when someone fetches the file
  during the recording.
- x264: ``superfast`` (on screens as small as ``veryfast``, for a fifth less CPU) with
  ``zerolatency`` (no frame held back), one thread per recording, so a busy screen takes at most
  one core's slice and an idle one none.

Blocking: a writer is used from one thread at a time; PyAV lets go of the GIL while it decodes,
scales, encodes and muxes, so the event loop runs on meanwhile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import av.video.frame

from opencone.drivers.pointer_sprite import draw_pointer

TIME_BASE = Fraction(1, 1000)  # PTS in milliseconds
MOVFLAGS = "frag_every_frame+empty_moov+default_base_moof"


class Mp4Writer:
    """One recording's video: JPEGs in (any size: scaled to the first one's, rounded down to even,
    as yuv420p needs), H.264 in fragmented MP4 out."""

    def __init__(self, path: Path, width: int, height: int, *, crf: int = 26, preset: str = "superfast",
                 gop: int = 150) -> None:
        self.path = path
        self.width, self.height = max(2, width - width % 2), max(2, height - height % 2)
        self._container = av.open(str(path), "w", format="mp4",
                                  options={"movflags": MOVFLAGS, "flush_packets": "1"})
        try:
            stream = self._container.add_stream("libx264")
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
            stream.time_base = TIME_BASE
            cc = stream.codec_context
            cc.time_base = TIME_BASE
            cc.gop_size = gop
            cc.thread_count = 1
            stream.options = {"preset": preset, "tune": "zerolatency", "crf": str(crf)}
        except BaseException:
            self._container.close()
            raise
        self._stream = stream
        self._decoder = av.CodecContext.create("mjpeg", "r")
        # one thread per recording, decoder and scaler too: their default (0, one per core) makes
        # threads of their own, so a recording could take every core and the server's thread count
        # would depend on the frames' sizes
        self._decoder.thread_count = 1
        self._last: av.VideoFrame | None = None
        self._last_pts = -1
        self.frames = 0  # pictures encoded, repeats included
        self.size = 0  # bytes in the file, every one of them part of a complete fragment
        self.closed = False

    @property
    def duration(self) -> float:
        """Seconds from the start to the last encoded picture."""
        return max(self._last_pts, 0) / 1000

    def write_jpeg(self, jpeg: bytes, t: float, pointer: tuple[int, int] | None = None) -> None:
        """Encode one JPEG taken ``t`` seconds after the start, with the mouse pointer drawn at
        ``pointer`` (the JPEG's pixels) if given."""
        pictures = self._decoder.decode(av.Packet(jpeg))
        if not pictures:
            return
        source = pictures[-1]
        picture = source.reformat(width=self.width, height=self.height, format="yuv420p", threads=1)
        if pointer is not None:
            draw_pointer(picture, pointer[0] * self.width // max(source.width, 1),
                         pointer[1] * self.height // max(source.height, 1))
        self._encode(picture, t)

    def repeat(self, t: float) -> None:
        """The last picture again at ``t``, so everything before ``t`` is in the file."""
        if self._last is not None and round(t * 1000) > self._last_pts:
            self._encode(self._last, t)

    def _encode(self, picture: av.VideoFrame, t: float) -> None:
        # the first picture (the screen when the recording started: never dropped) at 0, as the muxer
        # would make it anyway, which would shift every picture against the recording's clock; then
        # strictly increasing, whatever the clocks did
        pts = max(round(t * 1000), self._last_pts + 1) if self._last_pts >= 0 else 0
        picture.pts, picture.time_base = pts, TIME_BASE
        picture.pict_type = av.video.frame.PictureType.NONE  # a JPEG's picture is an I-frame: x264 would obey
        for packet in self._stream.encode(picture):
            self._container.mux(packet)
        self._last, self._last_pts = picture, pts
        self.frames += 1
        self.size = os.path.getsize(self.path)

    def close(self, t: float | None = None) -> None:
        """End the video (at ``t`` if given: the screen stayed as it was until then) and write the
        trailer."""
        if self.closed:
            return
        self.closed = True
        try:
            if t is not None:
                self.repeat(t)
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
            self.size = os.path.getsize(self.path)


@dataclass(frozen=True, slots=True)
class Probe:
    codec: str
    width: int
    height: int
    frames: int
    duration: float  # seconds, to the end of the last frame


def probe(path: Path) -> Probe | None:
    """What a (maybe cut-short) MP4 holds, reading every packet; None if it has no video frame."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            tb = stream.time_base or TIME_BASE
            frames, end = 0, 0
            try:
                for packet in container.demux(stream):
                    if packet.pts is None:
                        continue  # the flush packet at the end
                    frames += 1
                    end = max(end, packet.pts + (packet.duration or 0))
            except av.error.FFmpegError:
                pass  # a fragment cut short by a crash: what came before it stands
            if not frames:
                return None
            return Probe(stream.codec_context.name, stream.width, stream.height, frames, float(end * tb))
    except (av.error.FFmpegError, OSError):
        return None
