"""PyAV backend: read the packet index once, seek near the first wanted frame, decode forward.

Opening demuxes every packet of the video stream (no decoding) to learn each frame's presentation
timestamp: that gives an exact frame count, exact times on variable-frame-rate video, and the timestamp
to seek to. Decoding then starts at the key frame before the first wanted frame instead of at frame 0.
Streams whose packets carry no timestamps are decoded from the start, counting frames.
"""
from typing import Dict, List, Optional

import av
import numpy as np
import torch

from videodiff.data.decoding import Video
from videodiff.data.media_errors import VideoDecodeError, reason_of

# Seek this many frames before the first wanted one. Some demuxers (mp4) seek by decode time, which runs
# ahead of presentation time by the B-frame delay (x264 uses at most 3-4 B-frames): the margin keeps the
# seek from landing on a key frame after the wanted frame. If it still does, decoding restarts at frame 0.
_SEEK_MARGIN = 4


def check_available() -> None:
    """PyAV is a core dependency and carries its own FFmpeg: importing this module is the check."""


def open_video(path: str, source) -> "PyAVVideo":
    return PyAVVideo(path, source)



class PyAVVideo(Video):
    def __init__(self, path: str, source):
        super().__init__(path)
        try:
            self.container = av.open(source)
            self.on_close(self.container.close)
            if not self.container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            self.stream = self.container.streams.video[0]
            self.pts, self.num_frames = _scan_packets(self.container, self.stream)
        except (av.FFmpegError, OSError, ValueError) as e:
            self.close()
            raise VideoDecodeError(path, reason_of(e)) from None
        self.index_of: Dict[int, int] = {p: i for i, p in enumerate(self.pts or ())}

    def timestamps(self) -> np.ndarray:
        if self.pts is None:  # no packet timestamps: assume the stream's average rate
            return np.arange(self.num_frames) / float(self.stream.average_rate or 1)
        return (np.asarray(self.pts, dtype=np.float64) - self.pts[0]) * float(self.stream.time_base)

    def _decode(self, indices: List[int]) -> torch.Tensor:
        wanted, last = set(indices), max(indices)
        try:
            found = self._decode_after_seek(wanted, last) if self.pts is not None else {}
            if len(found) < len(wanted):
                found = self._decode_from_start(wanted, last)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoDecodeError(self.path, reason_of(e)) from None
        if len(found) < len(wanted):
            missing = min(wanted - found.keys())
            raise VideoDecodeError(self.path, f"frame {missing} could not be decoded (the file may be truncated)")
        return torch.from_numpy(np.stack([found[i] for i in indices]))

    def _decode_after_seek(self, wanted: set, last: int) -> Dict[int, np.ndarray]:
        target = self.pts[max(min(wanted) - _SEEK_MARGIN, 0)]
        self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        found = {}
        for frame in self.container.decode(self.stream):
            i = self.index_of.get(frame.pts)
            if i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")
            if i is not None and i >= last:
                break
        return found

    def _decode_from_start(self, wanted: set, last: int) -> Dict[int, np.ndarray]:
        self.container.seek(0)
        found = {}
        for i, frame in enumerate(self.container.decode(self.stream)):
            if i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
        return found


def _scan_packets(container, stream):
    """``(sorted presentation timestamps or None, frame count)`` from the stream's packets, no decoding."""
    pts: Optional[List[int]] = []
    count = 0
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet at the end
            continue
        count += 1
        if packet.pts is None:
            pts = None
        elif pts is not None:
            pts.append(packet.pts)
    if pts is not None and len(set(pts)) != len(pts):
        pts = None  # repeated timestamps cannot identify frames: fall back to counting
    return (sorted(pts) if pts is not None else None), count
