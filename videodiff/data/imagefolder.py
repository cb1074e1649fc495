"""ImageNet-style folders as one-frame clips: ``{root}/{split}/{class_name}/*.png|jpg|jpeg``.

Labels are the positions of the class folders in sorted order. Items have the same shape as
Kinetics items (see ``kinetics.py``) with T = 1: ``clip`` is ``[R, C, 1, H, W]``, ``view`` is 0, so images
run through the same transforms, collate and model code as videos. Train: random resized crop + flip
(+ RandAugment when AUG.RAND_AUG is set). Test images are resized to ``crop / 0.875`` on the short side and
centre-cropped (the ImageNet rule). Unreadable images are handled like bad videos (``bad_media.py``).
"""
import os
from functools import partial
from typing import List, Optional, Tuple

import numpy as np
import torch
from iopath.common.file_io import g_pathmgr
from PIL import Image
from torch.utils.data import Dataset

from videodiff.data.bad_media import item_with_retries, placeholder_item
from videodiff.data.few_labels import few_labels
from videodiff.data.kinetics import SPLITS
from videodiff.data.media_errors import ImageDecodeError
from videodiff.data.media_files import media_source
from videodiff.data.sampling import ItemRng
from videodiff.data.transforms import build_transform

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Short side at test time = TEST_CROP_SIZE / this (224 -> 256).
TEST_CROP_FRACTION = 0.875


class ImageFolderClips(Dataset):
    """Images under ``folder/{class_name}/``; ``folder`` is one split's directory."""

    def __init__(self, folder: str, split: str, transform, num_repeats: int = 1,
                 num_classes: Optional[int] = None, max_retries: int = 10, seed: int = 0,
                 labels_per_class: int = 0, labels_seed: int = 0):
        """``transform``: a ``TrainTransform`` for train, a ``TestTransform`` for val/test. ``labels_per_class`` > 0
        keeps that many images of each class (``few_labels.py``; from_cfg passes it for train only)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if split != "train" and num_repeats != 1:
            raise ValueError(f"num_repeats (AUG.NUM_SAMPLE) is for train; {split} got {num_repeats}")
        self.split, self.transform, self.num_repeats, self.max_retries = split, transform, num_repeats, max_retries
        self.classes, images = _scan(folder)
        self.images = few_labels(images, labels_per_class, labels_seed, folder)
        if num_classes is not None and len(self.classes) > num_classes:
            raise ValueError(f"{folder}: {len(self.classes)} class folders but MODEL.NUM_CLASSES = {num_classes}")
        self.rng = ItemRng(seed)

    @classmethod
    def from_cfg(cls, cfg, split: str) -> "ImageFolderClips":
        """``{DATA.PATH_TO_DATA_DIR}/{split}``; train draws AUG.NUM_SAMPLE augmented copies per image from
        DATA.LABELS_PER_CLASS images per class (0: all)."""
        return cls(os.path.join(cfg.DATA.PATH_TO_DATA_DIR, split), split,
                   build_transform(cfg, split, test_crop_fraction=TEST_CROP_FRACTION),
                   num_repeats=cfg.AUG.NUM_SAMPLE if split == "train" else 1,
                   num_classes=cfg.MODEL.NUM_CLASSES, max_retries=cfg.DATA.MAX_RETRIES, seed=cfg.RNG_SEED,
                   labels_per_class=cfg.DATA.LABELS_PER_CLASS if split == "train" else 0,
                   labels_seed=cfg.DATA.LABELS_SEED)

    def set_epoch(self, epoch: int) -> None:
        self.rng.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        if self.split == "train":
            retry_rng = partial(self.rng.generator, index, 1)
            return item_with_retries(self._load, index, len(self), self.max_retries, retry_rng)
        try:
            return self._load(index)
        except ImageDecodeError as e:
            size = self.transform.crop_size
            shape = (1, len(self.transform.mean), 1, size, size)
            return placeholder_item(shape, self.images[index][1], index, 0, e, self.transform.dtype)

    def _load(self, index: int) -> dict:
        path, label = self.images[index]
        frames = _read_image(path)  # [1, H, W, 3]
        if self.split == "train":
            rng = self.rng.generator(index)
            clips = torch.stack([self.transform(frames, rng) for _ in range(self.num_repeats)])
        else:
            clips = self.transform(frames).unsqueeze(0)
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


def rgb_uint8(image: Image.Image) -> np.ndarray:
    """``image`` as RGB uint8 ``[H, W, 3]``.

    16-bit greyscale (PNG; Pillow modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, or ``I`` in older Pillows)
    maps 0..65535 to 0..255 (``round(v / 257)``) and repeats the grey in R, G, B: ``convert("RGB")`` would clip
    every value above 255, turning such an image nearly white. 16-bit RGB PNGs Pillow already reads as 8-bit RGB.
    """
    if image.mode == "I" or image.mode.startswith("I;16"):
        wide = np.asarray(image).astype(np.int64).clip(0, 65535)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB")).copy()


def _read_image(path: str) -> torch.Tensor:
    """RGB uint8 ``[1, H, W, 3]``; an unreadable file raises ImageDecodeError naming it."""
    source = media_source(path, ImageDecodeError)
    try:
        with Image.open(source) as image:
            rgb = rgb_uint8(image)
    # Pillow reports broken files as OSError (truncated, not an image) and, for some formats, as
    # SyntaxError or ValueError.
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(path, str(e) or type(e).__name__) from None
    finally:
        if not isinstance(source, str):
            source.close()
    return torch.from_numpy(rgb).unsqueeze(0)
