"""Frames of one video, whatever the decoder: the one seam between files and tensors.

``open_video(path, backend)`` gives a ``Video`` with ``num_frames``, ``timestamps()`` and ``decode(indices)``;
a dataset item opens its video once, so the container and frame index are read once per item.
``decode_frames`` and ``count_frames`` are one-call shortcuts.

Backends (``DATA.DECODING_BACKEND``), one file each:

* ``decord`` (default, ``decode_decord.py``): random access through decord's frame index.
* ``pyav`` (``decode_pyav.py``): seeks to the key frame before the first wanted frame, decodes forward.
* ``torchcodec`` (``decode_torchcodec.py``): optional (``pip install 'videodiff[torchcodec]'``); it needs
  FFmpeg's shared libraries (major version 4-9) installed on the system, and says so when they are missing.

Frame ``i`` is the i-th frame in presentation order. On H.264 mp4, constant or variable frame rate, the
three backends return identical frames for the same indices (``tests/test_data_decoding.py``).
"""
import importlib
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from videodiff.data.media_errors import VideoDecodeError  # noqa: F401  (re-exported: the decode error)
from videodiff.data.media_files import media_source

DEFAULT_BACKEND = "decord"
# DATA.DECODING_BACKEND -> module with ``open_video(path, source) -> Video`` and ``check_available()``.
# Imported on first use, so a missing optional decoder costs nothing until it is chosen.
_BACKENDS: Dict[str, str] = {
    "decord": "videodiff.data.decode_decord",
    "pyav": "videodiff.data.decode_pyav",
    "torchcodec": "videodiff.data.decode_torchcodec",
}
BACKENDS = tuple(_BACKENDS)
_PIP_NAMES = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec"}


class BackendUnavailable(ValueError):
    """The configured decoder cannot run on this machine (package or system libraries missing).

    A ``ValueError`` about ``DATA.DECODING_BACKEND``, not a ``VideoDecodeError``: it is a set-up problem,
    so it stops the run at once instead of being skipped file by file as bad media.
    """


class Video:
    """An open video. A backend sets ``num_frames``, implements ``_decode`` and ``timestamps``, and
    registers what to release with ``on_close``."""

    num_frames: int = 0

    def __init__(self, path: str):
        self.path = path
        self._closers: List[Callable[[], None]] = []

    def decode(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at 0-based ``indices`` (in that order, repeats allowed) as uint8 RGB ``[T, H, W, 3]``."""
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError(f"{self.path}: decode needs at least one frame index")
        if min(indices) < 0:
            raise ValueError(f"{self.path}: frame indices must be >= 0, got {min(indices)}")
        if max(indices) >= self.num_frames:
            raise VideoDecodeError(self.path, f"asked for frame {max(indices)} but the video has only "
                                              f"{self.num_frames} frames")
        return self._decode(indices)

    def timestamps(self) -> np.ndarray:
        """Presentation time of every frame, float64 seconds ``[num_frames]``, the first frame at 0."""
        raise NotImplementedError

    def _decode(self, indices: List[int]) -> torch.Tensor:
        raise NotImplementedError

    def on_close(self, release: Callable[[], None]) -> None:
        self._closers.append(release)

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> "Video":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(path: str, backend: str = DEFAULT_BACKEND) -> Video:
    """Open ``path`` with ``backend``; use as a context manager. Unreadable files raise VideoDecodeError."""
    module = _backend_module(backend)
    source = media_source(path)
    try:
        video = module.open_video(path, source)
    except BaseException:
        if not isinstance(source, str):
            source.close()
        raise
    if not isinstance(source, str):
        video.on_close(source.close)
    if video.num_frames <= 0:
        video.close()
        raise VideoDecodeError(path, "the video stream has no frames")
    return video


def decode_frames(path: str, indices: Sequence[int], backend: str = DEFAULT_BACKEND) -> torch.Tensor:
    """Frames at ``indices`` of ``path`` as uint8 RGB ``[T, H, W, 3]`` (see ``Video.decode``)."""
    with open_video(path, backend) as video:
        return video.decode(indices)


def count_frames(path: str, backend: str = DEFAULT_BACKEND) -> int:
    """Number of frames in the video's first video stream (> 0; an empty stream is a VideoDecodeError)."""
    with open_video(path, backend) as video:
        return video.num_frames


def check_backend(name: str) -> None:
    """Raise BackendUnavailable (or ValueError for an unknown name) unless ``name`` can decode here."""
    _backend_module(name)


def backend_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot decode on this machine, or None when it can."""
    try:
        check_backend(name)
    except ValueError as e:
        return str(e)
    return None


def _backend_module(name: str):
    if name not in _BACKENDS:
        raise ValueError(f"unknown DATA.DECODING_BACKEND {name!r}; allowed: {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(_BACKENDS[name])
    except ImportError as e:
        raise BackendUnavailable(f"DATA.DECODING_BACKEND = {name} cannot be used: {e}. Install it (pip install "
                                 f"{_PIP_NAMES[name]}) or choose another of {', '.join(BACKENDS)}") from None
    module.check_available()
    return module
