"""Which frames a clip uses, and the random generator each dataset item draws from.

Clock: windows are laid on a ``Timeline`` of ticks. With ``DATA.TARGET_FPS = 0`` a tick is one decoded frame
(the video's own rate; no timestamps are read). With ``TARGET_FPS = f > 0`` ticks are ``1/f`` seconds apart in
presentation time and each maps to the frame nearest to it, so a clip spans the same number of seconds on
every video: 30 fps and 60 fps sources give the same motion per clip, and on variable-frame-rate video
(phone footage) frames are evenly spaced in time rather than in frame count. Ticks finer than the source's
frames repeat frames.

Windows: a clip of ``num_frames`` frames taken every ``sampling_rate`` ticks spans
``(num_frames - 1) * sampling_rate + 1`` ticks. A video shorter than that span is not an error: the
window starts at tick 0 and ticks past the end are clamped to the last one, so the clip ends on a
repeated last frame (SlowFast instead stretches the stride; clamping keeps the frame rate of the clip
the same as every other clip's). A video of a single frame gives a clip of that frame repeated.

Randomness: every item draws from its own ``torch.Generator`` seeded from ``(seed, epoch, index)``,
so an item is the same whichever worker or rank produces it, and differs from epoch to epoch.
"""
from typing import List, Optional, Sequence

import numpy as np
import torch


class Timeline:
    """Ticks of the sampling clock, each mapped to a frame index (see the module docstring)."""

    def __init__(self, num_frames: int, timestamps: Optional[np.ndarray] = None, target_fps: float = 0.0):
        """``timestamps``: seconds of each frame (needed when ``target_fps > 0``)."""
        if target_fps > 0:
            self.frame_of_tick: Optional[np.ndarray] = nearest_frames(np.asarray(timestamps), target_fps)
            self.num_ticks = len(self.frame_of_tick)
        else:
            self.frame_of_tick, self.num_ticks = None, num_frames

    def __len__(self) -> int:
        return self.num_ticks

    def frames(self, ticks: Sequence[int]) -> List[int]:
        """Frame indices of ``ticks``."""
        if self.frame_of_tick is None:
            return [int(t) for t in ticks]
        return [int(self.frame_of_tick[t]) for t in ticks]


def nearest_frames(timestamps: np.ndarray, target_fps: float) -> np.ndarray:
    """For each tick ``k / target_fps`` inside the video, the index of the frame whose timestamp is nearest.

    ``timestamps``: sorted seconds ``[N]``. The video lasts until its last frame ends, taken as the last
    timestamp plus the median frame interval. Returns int64 ``[num_ticks]``, at least one tick.
    """
    times = timestamps - timestamps[0]
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / target_fps
    # The epsilon keeps a tick that lands exactly on the end (30 frames at 30 fps -> 30 ticks) inside.
    num_ticks = max(int(np.floor((times[-1] + step) * target_fps + 1e-6)), 1)
    ticks = np.arange(num_ticks) / target_fps
    after = np.clip(np.searchsorted(times, ticks), 0, len(times) - 1)
    before = np.clip(after - 1, 0, len(times) - 1)
    # A tick half-way between two frames takes the earlier one (the frame on screen at that time); the
    # tolerance keeps float rounding from deciding such ties.
    closer_after = np.abs(times[after] - ticks) < np.abs(ticks - times[before]) - 1e-9
    return np.where(closer_after, after, before).astype(np.int64)


def window_span(num_frames: int, sampling_rate: int) -> int:
    """Frames of the video covered by one clip."""
    return (num_frames - 1) * sampling_rate + 1


def _window(start: int, num_video_frames: int, num_frames: int, sampling_rate: int) -> List[int]:
    last = num_video_frames - 1
    return [min(start + i * sampling_rate, last) for i in range(num_frames)]


def train_window(num_video_frames: int, num_frames: int, sampling_rate: int,
                 rng: torch.Generator) -> List[int]:
    """A window with a uniformly random start among all that fit (clamped when none fits)."""
    _check(num_video_frames, num_frames, sampling_rate)
    max_start = max(num_video_frames - window_span(num_frames, sampling_rate), 0)
    start = int(torch.randint(0, max_start + 1, (1,), generator=rng))
    return _window(start, num_video_frames, num_frames, sampling_rate)


def test_window(num_video_frames: int, num_frames: int, sampling_rate: int,
                view: int, num_views: int) -> List[int]:
    """Window ``view`` of ``num_views`` uniformly spaced ones.

    With several views the first starts at frame 0 and the last ends at the last frame; with one
    view it is the centre window.
    """
    _check(num_video_frames, num_frames, sampling_rate)
    if not 0 <= view < num_views:
        raise ValueError(f"view must be in [0, {num_views}), got {view}")
    max_start = max(num_video_frames - window_span(num_frames, sampling_rate), 0)
    start = max_start // 2 if num_views == 1 else round(view * max_start / (num_views - 1))
    return _window(start, num_video_frames, num_frames, sampling_rate)


test_window.__test__ = False  # not a pytest test (pytest also collects imported test_* functions)


def _check(num_video_frames: int, num_frames: int, sampling_rate: int) -> None:
    if num_video_frames < 1 or num_frames < 1 or sampling_rate < 1:
        raise ValueError(
            f"need num_video_frames, num_frames, sampling_rate >= 1; got "
            f"{num_video_frames}, {num_frames}, {sampling_rate}")


class ItemRng:
    """Per-item generators from ``(seed, epoch, index)``.

    The epoch lives in a shared-memory tensor, so ``set_epoch`` in the main process reaches
    DataLoader workers too, persistent ones included (they copy the dataset once, at start).
    Call it before iterating the loader for that epoch.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def generator(self, index: int, stream: int = 0) -> torch.Generator:
        """The item's generator; ``stream`` > 0 gives further independent ones (e.g. for picking retries)."""
        # SeedSequence mixes the numbers, so nearby (epoch, index) pairs give unrelated streams.
        entropy = [self.seed, self.epoch, int(index)] + ([int(stream)] if stream else [])
        words = np.random.SeedSequence(entropy).generate_state(2)
        return torch.Generator().manual_seed(int(words[0]) << 31 | int(words[1]) >> 1)
