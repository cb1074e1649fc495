"""Frames of one video, whatever the decoder: the one seam between files and tensors.

``decode_frames`` and ``count_frames`` take a ``backend`` (``DATA.DECODING_BACKEND``). Implemented:

* ``pyav``: decodes sequentially from the first frame up to the largest index asked for. Our clips
  are short (Kinetics: 10 s), so this is simple and exact; long videos would want keyframe seeking
  (``container.seek``) before the first index, which is left for the data-pipeline issue.
* ``decord``: random access through decord's own index; gives the same frames as ``pyav`` for the
  H.264 mp4 files we write (tested).

``torchcodec`` is accepted by the config but not implemented yet.
"""
from typing import Callable, Dict, NamedTuple, Sequence

import numpy as np
import torch
from iopath.common.file_io import g_pathmgr


class VideoDecodeError(RuntimeError):
    """A video could not be read: missing, empty, corrupt, or shorter than the frames asked for."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: cannot decode video: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):  # survive the trip from a DataLoader worker to the main process
        return (type(self), (self.path, self.reason))


def decode_frames(path: str, indices: Sequence[int], backend: str = "pyav") -> torch.Tensor:
    """Frames at 0-based ``indices`` (in that order, repeats allowed) as uint8 RGB ``[T, H, W, 3]``."""
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError(f"{path}: decode_frames needs at least one frame index")
    if min(indices) < 0:
        raise ValueError(f"{path}: frame indices must be >= 0, got {min(indices)}")
    return _backend(backend).decode(path, indices)


def count_frames(path: str, backend: str = "pyav") -> int:
    """Number of frames in the video's first video stream (> 0; an empty stream is a VideoDecodeError)."""
    count = _backend(backend).count(path)
    if count <= 0:
        raise VideoDecodeError(path, "the video stream has no frames")
    return count


def _backend(name: str) -> "_Backend":
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name == "torchcodec":
        raise NotImplementedError(
            "DATA.DECODING_BACKEND = torchcodec is not implemented yet; use pyav or decord")
    raise ValueError(f"unknown DATA.DECODING_BACKEND {name!r}; allowed: {', '.join(sorted(_BACKENDS))}")


def _open_bytes(path: str):
    """The file, opened for reading; a missing or zero-byte file is a VideoDecodeError."""
    if not g_pathmgr.exists(path):
        raise VideoDecodeError(path, "file not found")
    f = g_pathmgr.open(path, "rb")
    if not f.read(1):
        f.close()
        raise VideoDecodeError(path, "the file is empty (0 bytes)")
    f.seek(0)
    return f


# ---------------------------------------------------------------- pyav
def _pyav_decode(path: str, indices: Sequence[int]) -> torch.Tensor:
    import av

    wanted, last = set(indices), max(indices)
    found: Dict[int, np.ndarray] = {}
    decoded = 0
    with _open_bytes(path) as f:
        try:
            with av.open(f) as container:
                stream = _pyav_video_stream(container, path)
                for frame in container.decode(stream):
                    if decoded in wanted:
                        found[decoded] = frame.to_ndarray(format="rgb24")
                    decoded += 1
                    if decoded > last:
                        break
        except (av.FFmpegError, OSError) as e:
            raise VideoDecodeError(path, str(e)) from None
    if decoded <= last:
        raise VideoDecodeError(path, f"asked for frame {last} but the video has only {decoded} frames")
    return torch.from_numpy(np.stack([found[i] for i in indices]))


def _pyav_count(path: str) -> int:
    """The container's frame count when it records one, else the number of video packets (no decoding)."""
    import av

    with _open_bytes(path) as f:
        try:
            with av.open(f) as container:
                stream = _pyav_video_stream(container, path)
                if stream.frames > 0:
                    return stream.frames
                return sum(1 for packet in container.demux(stream) if packet.size > 0)
        except (av.FFmpegError, OSError) as e:
            raise VideoDecodeError(path, str(e)) from None


def _pyav_video_stream(container, path: str):
    if not container.streams.video:
        raise VideoDecodeError(path, "no video stream")
    return container.streams.video[0]


# ---------------------------------------------------------------- decord
def _decord_reader(path: str):
    import decord

    with _open_bytes(path) as f:
        try:
            return decord.VideoReader(f, ctx=decord.cpu(0), num_threads=1)
        except (decord.DECORDError, RuntimeError) as e:
            raise VideoDecodeError(path, str(e).splitlines()[0]) from None


def _decord_decode(path: str, indices: Sequence[int]) -> torch.Tensor:
    reader = _decord_reader(path)
    if max(indices) >= len(reader):
        raise VideoDecodeError(path, f"asked for frame {max(indices)} but the video has only {len(reader)} frames")
    return torch.from_numpy(reader.get_batch(list(indices)).asnumpy())


def _decord_count(path: str) -> int:
    return len(_decord_reader(path))


class _Backend(NamedTuple):
    decode: Callable[[str, Sequence[int]], torch.Tensor]
    count: Callable[[str], int]


# DATA.DECODING_BACKEND -> implementation. A new backend adds a row (and a same-frames test).
_BACKENDS: Dict[str, _Backend] = {
    "pyav": _Backend(_pyav_decode, _pyav_count),
    "decord": _Backend(_decord_decode, _decord_count),
}
