"""decord backend (the default): random access through decord's frame index, one decoding thread.

One thread, because DataLoader workers already decode in parallel: more threads per worker only contend
for the same cores.
"""
from typing import List

import decord
import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

from videodiff.data import decoding
from videodiff.data.decoding import Video
from videodiff.data.media_errors import VideoDecodeError, reason_of

# decord raises DECORDError (a RuntimeError) for most failures, plain RuntimeError / IndexError for some.
_ERRORS = (decord.DECORDError, RuntimeError, IndexError, ValueError)
# decord 0.6 cannot copy out frames of some narrow widths (16, 24, 48, 72 px seen) and fails with this
# message; such videos are fine, so they are decoded with PyAV instead (same frames, tested).
_COPY_BUG = "DECORDArrayCopyFromTo"


def check_available() -> None:
    """decord is a core dependency: importing this module is the check."""


def open_video(path: str, source) -> "DecordVideo":
    return DecordVideo(path, source)



class DecordVideo(Video):
    def __init__(self, path: str, source):
        super().__init__(path)
        try:
            self.reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
            self.num_frames = len(self.reader)
        except _ERRORS as e:
            raise VideoDecodeError(path, reason_of(e)) from None

    def timestamps(self) -> np.ndarray:
        starts = self.reader.get_frame_timestamp(list(range(self.num_frames)))[:, 0].astype(np.float64)
        return starts - starts[0]

    def _decode(self, indices: List[int]) -> torch.Tensor:
        try:
            # DLPack hands decord's buffer to torch without a copy (asnumpy would copy every frame).
            return from_dlpack(self.reader.get_batch(indices).to_dlpack())
        except _ERRORS as e:
            if _COPY_BUG in str(e):
                return self._decode_with_pyav(indices)
            raise VideoDecodeError(self.path, reason_of(e)) from None

    def _decode_with_pyav(self, indices: List[int]) -> torch.Tensor:
        with decoding.open_video(self.path, "pyav") as video:  # not this module's open_video(path, source)
            return video.decode(indices)
