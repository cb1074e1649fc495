"""Clip transforms: float tensors ``[C, T, H, W]``, one spatial operation applied to every frame.

Pixels are in [0, 1] until ``normalize``; ``DATA.MEAN`` / ``DATA.STD`` are given for that range.
Train: random resized crop (one box for the whole clip, so motion is not jittered) + horizontal flip,
all draws from the caller's ``torch.Generator``. Test: resize the short side, then crop ``spatial_idx``
of ``num_crops`` positions along the long side (1 = centre, 3 = left/centre/right or top/centre/bottom).
"""
import math
from typing import Sequence, Tuple

import torch
import torchvision.transforms.v2.functional as F


def to_float_clip(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``[T, H, W, C]`` -> float32 clip ``[C, T, H, W]`` in [0, 1]."""
    return frames.permute(3, 0, 1, 2).float().div_(255.0)


def normalize(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(clip - mean) / std`` on ``[C, T, H, W]``."""
    mean = torch.as_tensor(mean, dtype=clip.dtype).view(-1, 1, 1, 1)
    std = torch.as_tensor(std, dtype=clip.dtype).view(-1, 1, 1, 1)
    return (clip - mean) / std


def _uniform(low: float, high: float, rng: torch.Generator) -> float:
    return float(torch.empty(()).uniform_(low, high, generator=rng))


def _randint(low: int, high: int, rng: torch.Generator) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=rng))


def random_resized_crop_box(height: int, width: int, scale: Sequence[float], aspect: Sequence[float],
                            rng: torch.Generator) -> Tuple[int, int, int, int]:
    """``(top, left, h, w)`` covering a random fraction ``scale`` of the area at a random aspect ratio.

    The aspect ratio (w / h) is log-uniform in ``aspect``. After 10 boxes that do not fit, falls back to
    the largest centred box whose aspect lies in the range (the usual Inception-crop rule).
    """
    area = height * width
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], rng)
        ratio = math.exp(_uniform(log_aspect[0], log_aspect[1], rng))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return _randint(0, height - h, rng), _randint(0, width - w, rng), h, w
    ratio = min(max(width / height, aspect[0]), aspect[1])
    w, h = (width, round(width / ratio)) if ratio > width / height else (round(height * ratio), height)
    return (height - h) // 2, (width - w) // 2, h, w


def spatial_crop_box(height: int, width: int, crop_size: int, spatial_idx: int, num_crops: int) -> Tuple[int, int]:
    """``(top, left)`` of crop ``spatial_idx`` of ``num_crops``, spaced evenly along the long side.

    One crop is centred; with several the first touches the start and the last the end of the long side
    (for a square frame: left to right). The short side is always centred.
    """
    if not 0 <= spatial_idx < num_crops:
        raise ValueError(f"spatial_idx must be in [0, {num_crops}), got {spatial_idx}")
    if crop_size > min(height, width):
        raise ValueError(f"crop {crop_size} does not fit in a {height}x{width} frame")
    top, left = (height - crop_size) // 2, (width - crop_size) // 2
    if num_crops > 1:
        offset = round(spatial_idx * (max(height, width) - crop_size) / (num_crops - 1))
        top, left = (offset, left) if height > width else (top, offset)
    return top, left


class TrainTransform:
    """Random resized crop to ``crop_size`` (same box every frame), random flip, normalize."""

    def __init__(self, crop_size: int, scale: Sequence[float] = (0.08, 1.0),
                 aspect: Sequence[float] = (3 / 4, 4 / 3), flip: bool = True,
                 mean: Sequence[float] = (0.45, 0.45, 0.45), std: Sequence[float] = (0.225, 0.225, 0.225)):
        self.crop_size, self.scale, self.aspect = crop_size, tuple(scale), tuple(aspect)
        self.flip, self.mean, self.std = flip, tuple(mean), tuple(std)

    def __call__(self, clip: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """``[C, T, H, W]`` in [0, 1] -> normalized ``[C, T, crop, crop]``."""
        top, left, h, w = random_resized_crop_box(clip.shape[-2], clip.shape[-1], self.scale, self.aspect, rng)
        clip = F.resized_crop(clip, top, left, h, w, [self.crop_size, self.crop_size], antialias=True)
        if self.flip and _uniform(0.0, 1.0, rng) < 0.5:
            clip = clip.flip(-1)
        return normalize(clip, self.mean, self.std)


class TestTransform:
    """Resize the short side to ``resize_size`` (default ``crop_size``), crop one of ``num_crops``, normalize."""

    __test__ = False  # not a pytest test class

    def __init__(self, crop_size: int, resize_size: int = 0,
                 mean: Sequence[float] = (0.45, 0.45, 0.45), std: Sequence[float] = (0.225, 0.225, 0.225)):
        self.crop_size, self.resize_size = crop_size, resize_size or crop_size
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, clip: torch.Tensor, spatial_idx: int = 0, num_crops: int = 1) -> torch.Tensor:
        """``[C, T, H, W]`` in [0, 1] -> normalized ``[C, T, crop, crop]``."""
        clip = F.resize(clip, self.resize_size, antialias=True)
        top, left = spatial_crop_box(clip.shape[-2], clip.shape[-1], self.crop_size, spatial_idx, num_crops)
        clip = clip[..., top:top + self.crop_size, left:left + self.crop_size]
        return normalize(clip, self.mean, self.std)


def build_transform(cfg, split: str, test_crop_fraction: float = 1.0):
    """The config's transform for ``split``; test resizes the short side to ``TEST_CROP_SIZE / test_crop_fraction``."""
    d = cfg.DATA
    if split == "train":
        return TrainTransform(d.TRAIN_CROP_SIZE, d.TRAIN_JITTER_SCALES_RELATIVE, d.TRAIN_JITTER_ASPECT_RELATIVE,
                              d.RANDOM_FLIP, d.MEAN, d.STD)
    return TestTransform(d.TEST_CROP_SIZE, round(d.TEST_CROP_SIZE / test_crop_fraction), d.MEAN, d.STD)
