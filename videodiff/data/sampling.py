"""Which frames a clip uses, and the random generator each dataset item draws from.

Windows: a clip of ``num_frames`` frames taken every ``sampling_rate`` frames spans
``(num_frames - 1) * sampling_rate + 1`` frames of the video. A video shorter than that span is not an
error: the window starts at frame 0 and indices past the end are clamped to the last frame, so the
clip ends on a repeated last frame (SlowFast instead stretches the stride; clamping keeps the
frame rate of the clip the same as every other clip's).

Randomness: every item draws from its own ``torch.Generator`` seeded from ``(seed, epoch, index)``,
so an item is the same whichever worker or rank produces it, and differs from epoch to epoch.
"""
from typing import List

import numpy as np
import torch


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

    def generator(self, index: int) -> torch.Generator:
        # SeedSequence mixes the three numbers, so nearby (epoch, index) pairs give unrelated streams.
        words = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(2)
        return torch.Generator().manual_seed(int(words[0]) << 31 | int(words[1]) >> 1)
