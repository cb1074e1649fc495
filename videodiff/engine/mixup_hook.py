"""Mixup / CutMix for fine-tuning, as a trainer hook around timm's ``Mixup``.

Before each training step the batch's clips are mixed and its integer labels become soft targets [B, K]
(label smoothing included), which ``classification_loss`` accepts. timm mixes clip i with clip B-1-i
("batch" mode); with repeated augmentation the copies of one video are adjacent, so a clip is mixed with
itself only if it sits in the middle pair.
"""
import torch
from timm.data import Mixup

from videodiff.engine.hooks import Hook


def mix_batch(mixup: Mixup, batch: dict, device: torch.device) -> dict:
    """A copy of ``batch`` with mixed ``clip`` [B, C, T, H, W] and soft ``label`` [B, K] (on ``device``)."""
    clip = batch["clip"].to(device, non_blocking=True)
    if len(clip) % 2:
        raise ValueError(f"mixup pairs clip i with clip B-1-i and needs an even batch per rank, got {len(clip)}; "
                         f"change TRAIN.BATCH_SIZE or AUG.NUM_SAMPLE")
    # timm's cutmix cuts a box out of the last two axes; folding time into channels makes one box span all
    # frames (the same region of the whole clip is replaced, as video cutmix does).
    flat = clip.flatten(1, 2).clone()  # [B, C·T, H, W]; timm mixes in place, the loader's batch stays intact
    mixed, target = mixup(flat, batch["label"].to(device, non_blocking=True))
    return dict(batch, clip=mixed.reshape(clip.shape), label=target)


class MixupHook(Hook):
    """Replaces each training batch with its mixed version (validation and test never see this hook)."""

    def __init__(self, mixup: Mixup):
        self.mixup = mixup

    def before_step(self, trainer, batch):
        return mix_batch(self.mixup, batch, trainer.info.device)
