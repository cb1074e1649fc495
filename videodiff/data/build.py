"""Config -> dataset: a registry of dataset classes, each built by its ``from_cfg(cfg, split)``."""
from typing import Dict

from torch.utils.data import Dataset

from videodiff.data.imagefolder import ImageFolderClips
from videodiff.data.kinetics import SPLITS, KineticsDataset

# TRAIN.DATASET / TEST.DATASET name -> class with ``from_cfg(cfg, split)``. A new dataset adds a row.
DATASETS: Dict[str, type] = {
    "kinetics": KineticsDataset,
    "imagefolder": ImageFolderClips,
}


def build_dataset(cfg, split: str) -> Dataset:
    """The dataset for ``split``: train uses TRAIN.DATASET, val and test use TEST.DATASET."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    key = "TRAIN.DATASET" if split == "train" else "TEST.DATASET"
    name = cfg.TRAIN.DATASET if split == "train" else cfg.TEST.DATASET
    if name not in DATASETS:
        raise ValueError(f"{key} = {name!r} is not a known dataset; allowed: {', '.join(sorted(DATASETS))}")
    return DATASETS[name].from_cfg(cfg, split)
