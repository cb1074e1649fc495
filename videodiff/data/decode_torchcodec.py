"""torchcodec backend (optional): exact-seek decoding through PyTorch's own FFmpeg bindings.

torchcodec does not bundle FFmpeg: it loads the system's shared libraries (libavcodec, libavformat,
libavutil, ... of FFmpeg 4 to 9). ``check_available`` turns their absence into one clear message.
Frame timestamps come from PyAV's packet index (torchcodec has no public per-frame timestamp list).
"""
from typing import List

import numpy as np
import torch

from videodiff.data import decoding
from videodiff.data.decoding import BackendUnavailable, Video
from videodiff.data.media_errors import VideoDecodeError, reason_of

_NO_FFMPEG = ("DATA.DECODING_BACKEND = torchcodec needs the FFmpeg shared libraries (libavutil, libavcodec, "
              "libavformat, libavfilter, libavdevice, libswscale, libswresample; FFmpeg major version 4 to 9), "
              "and none could be loaded on this machine. Install them (Debian/Ubuntu: apt-get install ffmpeg; "
              "conda: conda install 'ffmpeg<8') or use DATA.DECODING_BACKEND decord or pyav.")


def check_available() -> None:
    try:  # lazily, here and below: torchcodec is optional, and imports even where FFmpeg is missing
        import torchcodec
    except ImportError as e:
        raise BackendUnavailable(f"DATA.DECODING_BACKEND = torchcodec needs the torchcodec package ({e}): "
                                 f"pip install 'videodiff[torchcodec]', or use decord or pyav") from None
    # torchcodec imports without FFmpeg (its image decoders need none) and leaves this None.
    if getattr(torchcodec, "ffmpeg_major_version", None) is None:
        raise BackendUnavailable(_NO_FFMPEG)


def open_video(path: str, source) -> "TorchCodecVideo":
    return TorchCodecVideo(path, source)



class TorchCodecVideo(Video):
    def __init__(self, path: str, source):
        from torchcodec.decoders import VideoDecoder  # lazily: see check_available

        super().__init__(path)
        try:
            self.decoder = VideoDecoder(source, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="exact")
            self.num_frames = len(self.decoder)
        except (RuntimeError, ValueError, IndexError) as e:
            raise VideoDecodeError(path, reason_of(e)) from None

    def timestamps(self) -> np.ndarray:
        with decoding.open_video(self.path, "pyav") as video:  # not this module's open_video(path, source)
            return video.timestamps()

    def _decode(self, indices: List[int]) -> torch.Tensor:
        try:
            return self.decoder.get_frames_at(indices).data
        except (RuntimeError, ValueError, IndexError) as e:
            raise VideoDecodeError(self.path, reason_of(e)) from None
