"""Kinetics-style video classification data: a list file of ``path label`` lines, decoded per item.

Item (every dataset in ``videodiff.data`` returns this shape)::

    {"clip":  uint8 [R, C, T, H, W] (DATA_LOADER.UINT8_HANDOVER; normalised on the device, normalize.py),
              or float32 normalized (the float handover),
     "label": int, "index": int (video number in the list), "view": int,
     "skipped": [(path, reason), ...] files that failed on the way (bad_media.py),
     "valid": bool (only when False: a val/test placeholder for an unreadable video)}

Train: one item per video; R = ``num_repeats`` clips (repeated augmentation), each with its own random
window and crop, all cut from ONE decode of the union of their frames. ``view`` is 0.
Val/test: ``num_views * num_crops`` items per video, R = 1; item ``k`` is video ``k // (views * crops)``
and ``view = k % (views * crops) = temporal_view * num_crops + spatial_crop``.
Windows are laid on the clock of ``sampling.py`` (``target_fps``; 0 = the video's own frames).
"""
import os
from functools import partial
from typing import List, Optional

import torch
from torch.utils.data import Dataset

from videodiff.data.bad_media import item_with_retries, placeholder_item
from videodiff.data.decoding import DEFAULT_BACKEND, Video, check_backend, decode_frames, open_video
from videodiff.data.few_labels import few_labels
from videodiff.data.media_errors import MediaError
from videodiff.data.sampling import ItemRng, Timeline, test_window, train_window
from videodiff.data.transforms import build_transform
from videodiff.data.video_list import read_video_list

SPLITS = ("train", "val", "test")


class KineticsDataset(Dataset):
    """Videos listed in ``csv_path``; see the module docstring for the items."""

    def __init__(self, csv_path: str, split: str, num_frames: int, sampling_rate: int, transform,
                 num_repeats: int = 1, num_views: int = 1, num_crops: int = 1, path_prefix: str = "",
                 separator: str = " ", num_classes: Optional[int] = None, base_dir: Optional[str] = None,
                 backend: str = DEFAULT_BACKEND, target_fps: float = 0.0, max_retries: int = 10, seed: int = 0,
                 labels_per_class: int = 0, labels_seed: int = 0):
        """``transform``: a ``TrainTransform`` for train, a ``TestTransform`` for val/test. ``labels_per_class`` > 0
        keeps that many videos of each class (``few_labels.py``; from_cfg passes it for train only)."""
        _check_split_args(split, num_repeats, num_views, num_crops)
        check_backend(backend)  # a decoder that cannot run here stops the run now, not file by file
        self.split, self.transform, self.backend, self.target_fps = split, transform, backend, target_fps
        self.num_frames, self.sampling_rate, self.max_retries = num_frames, sampling_rate, max_retries
        self.num_repeats, self.num_views, self.num_crops = num_repeats, num_views, num_crops
        videos = read_video_list(csv_path, path_prefix, separator, num_classes, base_dir)
        self.videos = few_labels(videos, labels_per_class, labels_seed, csv_path)
        self.rng = ItemRng(seed)
        # False: every clip decodes its own window, the naive way (the loader benchmark's comparison).
        self.shared_decode = True

    @classmethod
    def from_cfg(cls, cfg, split: str) -> "KineticsDataset":
        """``{DATA.PATH_TO_DATA_DIR}/{split}.csv``; test uses TEST.NUM_ENSEMBLE_VIEWS x NUM_SPATIAL_CROPS views,
        val one centre view (it runs every epoch), train AUG.NUM_SAMPLE repeats and DATA.LABELS_PER_CLASS."""
        d = cfg.DATA
        views, crops = (cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS) if split == "test" else (1, 1)
        return cls(os.path.join(d.PATH_TO_DATA_DIR, f"{split}.csv"), split, d.NUM_FRAMES, d.SAMPLING_RATE,
                   build_transform(cfg, split), num_repeats=cfg.AUG.NUM_SAMPLE if split == "train" else 1,
                   num_views=views, num_crops=crops, path_prefix=d.PATH_PREFIX, separator=d.PATH_LABEL_SEPARATOR,
                   num_classes=cfg.MODEL.NUM_CLASSES, base_dir=d.PATH_TO_DATA_DIR, backend=d.DECODING_BACKEND,
                   target_fps=d.TARGET_FPS, max_retries=d.MAX_RETRIES, seed=cfg.RNG_SEED,
                   labels_per_class=d.LABELS_PER_CLASS if split == "train" else 0, labels_seed=d.LABELS_SEED)

    def set_epoch(self, epoch: int) -> None:
        """Train randomness is drawn from (seed, epoch, index); call before each epoch's iteration."""
        self.rng.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.videos) * self.num_views * self.num_crops

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < len(self):
            raise IndexError(f"item {k} out of range for {len(self)} items")
        if self.split == "train":
            retry_rng = partial(self.rng.generator, k, 1)
            return item_with_retries(self._train_item, k, len(self), self.max_retries, retry_rng)
        try:
            return self._test_item(k)
        except MediaError as e:
            index, view = divmod(k, self.num_views * self.num_crops)
            shape = (1, len(self.transform.mean), self.num_frames, self.transform.crop_size, self.transform.crop_size)
            return placeholder_item(shape, self.videos[index][1], index, view, e, self.transform.dtype)

    def timeline(self, video: Video) -> Timeline:
        """The sampling clock of ``video`` (reads timestamps only when DATA.TARGET_FPS > 0)."""
        stamps = video.timestamps() if self.target_fps > 0 else None
        return Timeline(video.num_frames, stamps, self.target_fps)

    def train_windows(self, video: Video, rng: torch.Generator) -> List[List[int]]:
        """Frame indices of the R clips of a train item (one random window each)."""
        clock = self.timeline(video)
        return [clock.frames(train_window(len(clock), self.num_frames, self.sampling_rate, rng))
                for _ in range(self.num_repeats)]

    def _train_item(self, index: int) -> dict:
        path, label = self.videos[index]
        rng = self.rng.generator(index)
        with open_video(path, self.backend) as video:
            windows = self.train_windows(video, rng)
            union = sorted(set().union(*windows))
            frames = video.decode(union) if self.shared_decode else None  # [U, H, W, 3], the only decode
        size = self.transform.crop_size
        clips = torch.empty(len(windows), len(self.transform.mean), self.num_frames, size, size,
                            dtype=self.transform.dtype)
        for clip, window in zip(clips, windows):
            if frames is None:
                self.transform(decode_frames(path, window, self.backend), rng, out=clip)
            else:
                self.transform(frames, rng, out=clip, rows=rows_in_union(union, window))
        return {"clip": clips, "label": label, "index": index, "view": 0}

    def _test_item(self, k: int) -> dict:
        index, view = divmod(k, self.num_views * self.num_crops)
        temporal, spatial = divmod(view, self.num_crops)
        path, label = self.videos[index]
        with open_video(path, self.backend) as video:
            clock = self.timeline(video)
            ticks = test_window(len(clock), self.num_frames, self.sampling_rate, temporal, self.num_views)
            frames = video.decode(clock.frames(ticks))
        clip = self.transform(frames, spatial, self.num_crops)
        return {"clip": clip.unsqueeze(0), "label": label, "index": index, "view": view}


def rows_in_union(union: List[int], window: List[int]) -> Optional[List[int]]:
    """Positions of ``window``'s frames among the decoded ``union``; None when the window is the whole union."""
    if window == union:
        return None
    row = {frame: i for i, frame in enumerate(union)}
    return [row[f] for f in window]


def _check_split_args(split: str, num_repeats: int, num_views: int, num_crops: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if split == "train" and (num_views, num_crops) != (1, 1):
        raise ValueError(f"num_views/num_crops are for val/test; train got {num_views}/{num_crops}")
    if split != "train" and num_repeats != 1:
        raise ValueError(f"num_repeats (AUG.NUM_SAMPLE) is for train; {split} got {num_repeats}")
