"""Write frames to disk: H.264 mp4 clips (PyAV) and single images (Pillow).

The demo data set and the tests write their fixtures through these two functions, so the
encoder settings are chosen for reproducibility: the same frames give the same bytes.
"""
import os
from fractions import Fraction
from typing import Optional, Sequence

import av
import numpy as np
from PIL import Image

# Fixed x264 settings. One thread because x264's multithreaded output can depend on scheduling;
# crf 18 keeps a 64x64 digit visually lossless at a few kB per clip. cpu-independent: x264's SIMD lookahead
# (mb-tree) sums floats in an order that depends on where its buffers happen to lie, so without it the same
# frames encoded twice in one process gave different files (seen: 1 clip in 6 after unrelated allocations).
_X264_OPTIONS = {"crf": "18", "preset": "medium", "threads": "1", "x264-params": "cpu-independent=1"}


def _as_uint8_numpy(frames) -> np.ndarray:
    """Accept a numpy array or a torch tensor and return a contiguous uint8 numpy array."""
    if hasattr(frames, "detach"):  # torch.Tensor, without importing torch here
        frames = frames.detach().cpu().numpy()
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return frames


def _make_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def write_video(path: str, frames, fps: int = 10, codec: str = "libx264",
                times: Optional[Sequence[float]] = None) -> None:
    """Encode RGB frames as an mp4 (yuv420p).

    Args:
        path: output file; parent directories are created.
        frames: uint8 array or tensor [T, H, W, 3], RGB. H and W must be even (4:2:0 chroma).
        fps: frames per second; frame i gets presentation time i / fps seconds.
        codec: PyAV codec name. The fixed x264 options apply only to libx264.
        times: optional presentation time of each frame in seconds (increasing, millisecond precision),
            for variable-frame-rate video; ``fps`` is then only the nominal rate.
    """
    frames = _as_uint8_numpy(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{path}: frames must be [T>0, H, W, 3], got shape {tuple(frames.shape)}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(
            f"{path}: yuv420p needs even height and width, got shape {tuple(frames.shape)}")
    if times is not None and (len(times) != len(frames) or any(b <= a for a, b in zip(times, times[1:]))):
        raise ValueError(f"{path}: times must hold one increasing time per frame, got {len(times)} for {len(frames)}")
    time_base = Fraction(1, fps) if times is None else Fraction(1, 1000)
    stamps = range(len(frames)) if times is None else [round(t * 1000) for t in times]
    _make_parent(path)
    # "+bitexact" keeps the muxer from writing the libavformat version string, so files made
    # by different FFmpeg builds of the same encoder differ only where the encoder does.
    with av.open(path, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if codec == "libx264":
            stream.options = dict(_X264_OPTIONS)
        stream.codec_context.flags |= int(av.codec.context.Flags.bitexact)
        for stamp, rgb in zip(stamps, frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = stamp, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush delayed frames


def write_image(path: str, frame) -> None:
    """Save one RGB frame [H, W, 3] uint8; the format (PNG, JPEG, ...) follows the extension."""
    frame = _as_uint8_numpy(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"{path}: frame must be [H, W, 3], got shape {tuple(frame.shape)}")
    _make_parent(path)
    Image.fromarray(frame, mode="RGB").save(path)
