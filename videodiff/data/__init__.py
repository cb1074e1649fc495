"""Data: list files and folders -> decoded frames -> sampled windows -> transforms -> batches of clips."""
from videodiff.data.build import DATASETS, build_dataset
from videodiff.data.loader import build_loader, collate_clips, set_loader_epoch

__all__ = ["DATASETS", "build_dataset", "build_loader", "collate_clips", "set_loader_epoch"]
