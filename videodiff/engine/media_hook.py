"""Bad media in training: report the files the data loader skipped, and stop when there are too many.

Dataset items that hit an unreadable file retry another sample and carry the file in ``item["skipped"]``
(``videodiff/data/bad_media.py``); the collate gathers those into ``batch["skipped"]`` as ``(path, reason)``.
This hook, on every rank:

* warns once per epoch for each skipped file, naming it and the reason;
* at the end of the epoch gathers every rank's files, and the main rank appends the ones not listed before to
  ``OUTPUT_DIR/skipped_videos.txt`` (``path<TAB>reason`` per line, each file once per run);
* writes ``{"split": "train_epoch", "epoch", "skipped_videos", "skipped_videos_total"}`` to the stats once any
  file was skipped (this epoch's count and the run's);
* raises ``TooManyBadFiles`` (after the epoch's checkpoint is written) when the files skipped so far exceed
  ``DATA.MAX_FAILED_FRACTION`` of the training set. All ranks see the same gathered list, so all stop together.
"""
import os
from typing import Dict, Set

from videodiff.data.bad_media import check_failed_fraction
from videodiff.engine.distributed import all_gather_objects
from videodiff.engine.hooks import Hook
from videodiff.engine.logging import logger

SKIPPED_FILE = "skipped_videos.txt"


def read_skipped(output_dir: str) -> Set[str]:
    """Paths already listed in ``OUTPUT_DIR/skipped_videos.txt`` (empty when there is none)."""
    path = os.path.join(output_dir, SKIPPED_FILE)
    if not os.path.isfile(path):
        return set()
    with open(path) as f:
        return {line.split("\t")[0] for line in f.read().splitlines() if line}


class SkippedMediaHook(Hook):
    def __init__(self, max_failed_fraction: float, output_dir: str):
        self.max_failed_fraction = max_failed_fraction
        self.listing = os.path.join(output_dir, SKIPPED_FILE)
        self.epoch_skipped: Dict[str, str] = {}  # this rank, this epoch: path -> reason
        self.listed: Set[str] = set()  # every file in skipped_videos.txt, over the run

    def before_train(self, trainer):
        # A resumed run keeps its list: files found before the restart are neither re-listed nor forgotten.
        self.listed = read_skipped(os.path.dirname(self.listing))

    def before_epoch(self, trainer):
        self.epoch_skipped = {}

    def before_step(self, trainer, batch):
        for path, reason in batch.get("skipped", ()):
            if path not in self.epoch_skipped:
                logger.warning(f"skipped unreadable training file {path}: {reason} (another sample was used)")
            self.epoch_skipped[path] = reason
        return batch

    def after_epoch(self, trainer):
        skipped: Dict[str, str] = {}
        for part in all_gather_objects(self.epoch_skipped):
            skipped.update(part)
        new = {path: reason for path, reason in sorted(skipped.items()) if path not in self.listed}
        self.listed.update(new)
        if trainer.info.is_main and new:
            with open(self.listing, "a") as f:
                f.writelines(f"{path}\t{' '.join(reason.split())}\n" for path, reason in new.items())
        if self.listed:  # a clean run's stats stay as they are
            trainer.stats.write({"split": "train_epoch", "epoch": trainer.epoch + 1, "skipped_videos": len(skipped),
                                 "skipped_videos_total": len(self.listed)})
        check_failed_fraction(len(self.listed), len(trainer.loader.dataset), self.max_failed_fraction,
                              "training files", f"they are listed in {self.listing}")
