"""Clip transforms: uint8 frames ``[T, H, W, 3]`` in, clips ``[C, T, H, W]`` out: uint8 (``normalize=False``, the
uint8 handover: the training device normalises, ``normalize.py``) or normalized float32 (``normalize=True``).

Spatial work (crop, resize, flip) runs on the uint8 frames, before conversion to float: resizing a
channels-last uint8 tensor is several times faster than resizing floats, and only the small crop is ever
converted. Pixels are in [0, 1] after conversion; ``DATA.MEAN`` / ``DATA.STD`` are given for that range.
Without RandAugment both handovers give bit-identical normalised clips; RandAugment works in float, and the
uint8 handover rounds its output back to whole grey levels (at most half a level, 0.5 / 255, away).

Train: random resized crop (one box for the whole clip, so motion is not jittered) + horizontal flip +
optional RandAugment (``randaug.py``, the same operations on every frame); all draws come from the
caller's ``torch.Generator``. Test: resize the short side, then crop ``spatial_idx`` of ``num_crops``
positions along the long side (1 = centre, 3 = left/centre/right or top/centre/bottom).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torchvision.transforms.v2.functional as F

from videodiff.data.normalize import DEFAULT_MEAN, DEFAULT_STD, normalization_constants
from videodiff.data.randaug import ClipRandAugment


def to_float_clip(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``[T, H, W, C]`` -> float32 clip ``[C, T, H, W]`` in [0, 1]."""
    return frames.permute(3, 0, 1, 2).float().div_(255.0)


def _frames_first(frames: torch.Tensor) -> torch.Tensor:
    """``[T, H, W, C]`` -> ``[T, C, H, W]`` as a view: channels-last memory, which torchvision resizes fastest."""
    if frames.dim() != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got shape {tuple(frames.shape)}")
    return frames.permute(0, 3, 1, 2)


def _to_normalized_clip(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                        out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[T, C, H, W]`` (uint8, or float in [0, 1]) -> contiguous normalized float ``[C, T, H, W]``, written
    into ``out`` when given (a slot of the item's ``[R, C, T, H, W]``: no extra copy to stack the R clips)."""
    scale = 255.0 if frames.dtype == torch.uint8 else 1.0
    shape = (frames.shape[1], frames.shape[0], *frames.shape[2:])
    clip = torch.empty(shape, dtype=torch.float32) if out is None else out
    if tuple(clip.shape) != shape:
        raise ValueError(f"out has shape {tuple(clip.shape)}, the clip {shape}")
    clip.copy_(frames.transpose(0, 1))
    gain, shift = normalization_constants(mean, std, scale)  # shared with the device-side ClipNormalizer
    return clip.mul_(gain).sub_(shift)


def _to_uint8_clip(frames: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[T, C, H, W]`` (uint8, or float in [0, 1]) -> contiguous uint8 ``[C, T, H, W]``, into ``out`` when given.

    Float frames (RandAugment's output) are rounded to the nearest grey level: the only change the uint8
    handover makes to a clip."""
    if frames.dtype != torch.uint8:
        frames = frames.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    shape = (frames.shape[1], frames.shape[0], *frames.shape[2:])
    clip = torch.empty(shape, dtype=torch.uint8) if out is None else out
    if tuple(clip.shape) != shape or clip.dtype != torch.uint8:
        raise ValueError(f"out is {clip.dtype} {tuple(clip.shape)}, the clip uint8 {shape}")
    return clip.copy_(frames.transpose(0, 1))


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


def _resized_crop(frames: torch.Tensor, rows: Optional[Sequence[int]], box: Tuple[int, int, int, int],
                  size: int) -> torch.Tensor:
    """``box`` = (top, left, h, w) of ``frames[rows]`` ``[U, H, W, 3]`` resized to ``[T, 3, size, size]``.

    The box is cut as a view before the rows are gathered, so only the cropped pixels are copied, never
    whole decoded frames (on HD video that copy would cost more than the resize).
    """
    top, left, h, w = box
    crop = frames[:, top:top + h, left:left + w]
    if rows is not None:
        crop = crop.index_select(0, torch.tensor(rows))
    return F.resize(_frames_first(crop), [size, size], antialias=True)


def _handover(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float], normalize: bool,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A transform's last step: normalized float32 ``[C, T, H, W]``, or uint8 for the device to normalise."""
    return _to_normalized_clip(frames, mean, std, out) if normalize else _to_uint8_clip(frames, out)


class TrainTransform:
    """Random resized crop to ``crop_size`` (same box every frame), random flip, RandAugment, normalize."""

    def __init__(self, crop_size: int, scale: Sequence[float] = (0.08, 1.0),
                 aspect: Sequence[float] = (3 / 4, 4 / 3), flip: bool = True,
                 mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
                 rand_aug: str = "", normalize: bool = True):
        """``rand_aug``: a timm-style RandAugment setting such as ``rand-m9-n2-mstd0.5``; ``""`` = off.
        ``normalize`` False: hand over uint8 clips (``DATA_LOADER.UINT8_HANDOVER``), normalised on the device."""
        self.crop_size, self.scale, self.aspect = crop_size, tuple(scale), tuple(aspect)
        self.flip, self.mean, self.std = flip, tuple(mean), tuple(std)
        self.rand_aug: Optional[ClipRandAugment] = ClipRandAugment(rand_aug) if rand_aug else None
        self.normalize = normalize
        self.dtype = torch.float32 if normalize else torch.uint8  # of the clips handed over

    def __call__(self, frames: torch.Tensor, rng: torch.Generator, out: Optional[torch.Tensor] = None,
                 rows: Optional[Sequence[int]] = None) -> torch.Tensor:
        """uint8 ``[U, H, W, 3]`` -> ``[C, T, crop, crop]`` of ``self.dtype`` (written into ``out`` when given).

        The clip is ``frames[rows]`` (all U frames when ``rows`` is None): repeated-augmentation clips pick
        their frames out of one shared decode without copying them first.
        """
        _frames_first(frames)  # shape check
        box = random_resized_crop_box(frames.shape[1], frames.shape[2], self.scale, self.aspect, rng)
        frames = _resized_crop(frames, rows, box, self.crop_size)
        if self.flip and _uniform(0.0, 1.0, rng) < 0.5:
            frames = frames.flip(-1)
        if self.rand_aug is not None:
            frames = self.rand_aug(frames.float().div_(255.0), rng)
        return _handover(frames, self.mean, self.std, self.normalize, out)


class TestTransform:
    """Resize the short side to ``resize_size`` (default ``crop_size``), crop one of ``num_crops``, normalize."""

    __test__ = False  # not a pytest test class

    def __init__(self, crop_size: int, resize_size: int = 0, mean: Sequence[float] = DEFAULT_MEAN,
                 std: Sequence[float] = DEFAULT_STD, normalize: bool = True):
        """``normalize`` False: hand over uint8 clips (``DATA_LOADER.UINT8_HANDOVER``), normalised on the device."""
        self.crop_size, self.resize_size = crop_size, resize_size or crop_size
        self.mean, self.std, self.normalize = tuple(mean), tuple(std), normalize
        self.dtype = torch.float32 if normalize else torch.uint8  # of the clips handed over

    def __call__(self, frames: torch.Tensor, spatial_idx: int = 0, num_crops: int = 1) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> ``[C, T, crop, crop]`` of ``self.dtype``."""
        frames = F.resize(_frames_first(frames), self.resize_size, antialias=True)
        top, left = spatial_crop_box(frames.shape[-2], frames.shape[-1], self.crop_size, spatial_idx, num_crops)
        frames = frames[..., top:top + self.crop_size, left:left + self.crop_size]
        return _handover(frames, self.mean, self.std, self.normalize)


def build_transform(cfg, split: str, test_crop_fraction: float = 1.0):
    """The config's transform for ``split``; test resizes the short side to ``TEST_CROP_SIZE / test_crop_fraction``.
    With DATA_LOADER.UINT8_HANDOVER its clips are uint8: pass them through ``normalize.ClipNormalizer``."""
    d, normalize = cfg.DATA, not cfg.DATA_LOADER.UINT8_HANDOVER
    if split == "train":
        return TrainTransform(d.TRAIN_CROP_SIZE, d.TRAIN_JITTER_SCALES_RELATIVE, d.TRAIN_JITTER_ASPECT_RELATIVE,
                              d.RANDOM_FLIP, d.MEAN, d.STD, rand_aug=cfg.AUG.RAND_AUG, normalize=normalize)
    return TestTransform(d.TEST_CROP_SIZE, round(d.TEST_CROP_SIZE / test_crop_fraction), d.MEAN, d.STD, normalize)
