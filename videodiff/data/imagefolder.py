"""ImageNet-style folders as one-frame clips: ``{root}/{split}/{class_name}/*.png|jpg|jpeg``.

Labels are the positions of the class folders in sorted order. Items have the same shape as
Kinetics items (see ``kinetics.py``) with T = 1: ``clip`` is ``[R, C, 1, H, W]``, ``view`` is 0.
Test images are resized to ``crop / 0.875`` on the short side and centre-cropped (the ImageNet rule).
"""
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from iopath.common.file_io import g_pathmgr
from PIL import Image
from torch.utils.data import Dataset

from videodiff.data.kinetics import SPLITS
from videodiff.data.sampling import ItemRng
from videodiff.data.transforms import build_transform, to_float_clip

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Short side at test time = TEST_CROP_SIZE / this (224 -> 256).
TEST_CROP_FRACTION = 0.875


class ImageFolderClips(Dataset):
    """Images under ``folder/{class_name}/``; ``folder`` is one split's directory."""

    def __init__(self, folder: str, split: str, transform, num_repeats: int = 1,
                 num_classes: Optional[int] = None, seed: int = 0):
        """``transform``: a ``TrainTransform`` for train, a ``TestTransform`` for val/test."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if split != "train" and num_repeats != 1:
            raise ValueError(f"num_repeats (AUG.NUM_SAMPLE) is for train; {split} got {num_repeats}")
        self.split, self.transform, self.num_repeats = split, transform, num_repeats
        self.classes, self.images = _scan(folder)
        if num_classes is not None and len(self.classes) > num_classes:
            raise ValueError(f"{folder}: {len(self.classes)} class folders but MODEL.NUM_CLASSES = {num_classes}")
        self.rng = ItemRng(seed)

    @classmethod
    def from_cfg(cls, cfg, split: str) -> "ImageFolderClips":
        """``{DATA.PATH_TO_DATA_DIR}/{split}``; train draws AUG.NUM_SAMPLE augmented copies per image."""
        return cls(os.path.join(cfg.DATA.PATH_TO_DATA_DIR, split), split,
                   build_transform(cfg, split, test_crop_fraction=TEST_CROP_FRACTION),
                   num_repeats=cfg.AUG.NUM_SAMPLE if split == "train" else 1,
                   num_classes=cfg.MODEL.NUM_CLASSES, seed=cfg.RNG_SEED)

    def set_epoch(self, epoch: int) -> None:
        self.rng.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        path, label = self.images[index]
        clip = to_float_clip(_read_image(path))  # [C, 1, H, W]
        if self.split == "train":
            rng = self.rng.generator(index)
            clips = torch.stack([self.transform(clip, rng) for _ in range(self.num_repeats)])
        else:
            clips = self.transform(clip).unsqueeze(0)
        return {"clip": clips, "label": label, "index": index, "view": 0}


def _scan(folder: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Sorted class names and ``[(image_path, label), ...]`` (sorted within each class)."""
    if not g_pathmgr.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    classes = sorted(name for name in g_pathmgr.ls(folder) if g_pathmgr.isdir(os.path.join(folder, name)))
    images = []
    for label, name in enumerate(classes):
        files = sorted(f for f in g_pathmgr.ls(os.path.join(folder, name)) if f.lower().endswith(IMAGE_EXTENSIONS))
        images += [(os.path.join(folder, name, f), label) for f in files]
    if not images:
        raise ValueError(f"{folder}: no {'/'.join(IMAGE_EXTENSIONS)} images in class sub-folders")
    return classes, images


def _read_image(path: str) -> torch.Tensor:
    """RGB uint8 ``[1, H, W, 3]``."""
    try:
        with g_pathmgr.open(path, "rb") as f:
            image = Image.open(f).convert("RGB")
    except OSError as e:
        raise OSError(f"{path}: cannot read image: {e}") from None
    return torch.from_numpy(np.asarray(image).copy()).unsqueeze(0)
