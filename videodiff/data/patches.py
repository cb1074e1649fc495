"""Random patches of the train split, for fitting l-DAE's patch tokenizers (tools/fit_pca.py, tools/fit_tokenizer.py).

The train loader is built from the config exactly as training builds it (same augmentation, DATA.MEAN / STD
normalisation), each clip is cut into flat patches in ``patchify``'s layout, and up to ``per_clip`` random patches
of each clip (drawn with RNG_SEED) are kept, until ``num_patches``; if one pass over the split is not enough, it says
so and passes over it again (new crops, new draws) as often as needed.

Memory is bounded whatever the training recipe: the loader's batches are at most ``FIT_BATCH_CLIPS`` clips, one
copy each (``fit_loader_cfg``). Video clips give spacetime patches of a (t_patch, p, C) layout, or, for a
per-frame tokenizer (LDAE.TOKENIZER_SCOPE frame), (1, p, C) patches drawn from all frames of the clip.
"""
import time
from typing import Iterator, Tuple

import torch

from videodiff.data.loader import build_loader, set_loader_epoch
from videodiff.data.normalize import ClipNormalizer
from videodiff.models.patchify import patchify

# Clips per loader batch while fitting. The fit wants patches, not the training batch: a K400 pretraining batch
# (TRAIN.BATCH_SIZE 512 x AUG.NUM_SAMPLE 4 clips of 16 x 224^2) would be about 20 GB of float32 in one tensor.
FIT_BATCH_CLIPS = 8


def fit_loader_cfg(cfg):
    """A copy of ``cfg`` whose train loader gives at most FIT_BATCH_CLIPS clips per batch, one copy of each
    (repeated-augmentation copies of a video add crops, not videos) and no accumulation split."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TRAIN.BATCH_SIZE = min(cfg.TRAIN.BATCH_SIZE, FIT_BATCH_CLIPS)
    cfg.TRAIN.ACCUM_STEPS = 1
    cfg.AUG.NUM_SAMPLE = 1
    cfg.freeze()
    return cfg


def sample_patches(clip: torch.Tensor, layout: Tuple[int, int, int], per_clip: int,
                   generator: torch.Generator) -> torch.Tensor:
    """clip [B, C, T, H, W] -> [B·k, D]: k = min(per_clip, N) distinct random patches of each clip."""
    t_patch, p, channels = layout
    if clip.shape[1] != channels:
        raise ValueError(f"the loader's clips have {clip.shape[1]} channels but VIT.IN_CHANNELS = {channels}")
    patches = patchify(clip, t_patch, p)                                   # [B, N, D]
    b, n, dim = patches.shape
    index = torch.rand(b, n, generator=generator).argsort(dim=1)[:, :min(per_clip, n)]
    return patches.gather(1, index.unsqueeze(-1).expand(-1, -1, dim)).reshape(-1, dim)


class TrainPatches:
    """Iterating yields [m, D] chunks of random train patches, exactly ``num_patches`` rows in all; afterwards
    ``count`` is that number and ``passes`` the passes over the split it took. ``layout`` is (t_patch, p, C)."""

    def __init__(self, cfg, layout: Tuple[int, int, int], num_patches: int, per_clip: int,
                 batches_per_log: int = 50):
        self.cfg, self.layout, self.num_patches = cfg, tuple(layout), int(num_patches)
        self.per_clip, self.batches_per_log = int(per_clip), int(batches_per_log)
        t_patch, p, channels = self.layout
        self.D = t_patch * p * p * channels
        self.count, self.passes = 0, 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        loader, normalize = build_loader(fit_loader_cfg(self.cfg), "train", 0, 1), ClipNormalizer.from_cfg(self.cfg)
        generator = torch.Generator().manual_seed(self.cfg.RNG_SEED)
        start, step = time.perf_counter(), 0
        self.count, self.passes = 0, 0
        while self.count < self.num_patches:
            set_loader_epoch(loader, self.passes)
            before = self.count
            for batch in loader:
                chunk = sample_patches(normalize(batch["clip"]), self.layout, self.per_clip, generator)
                chunk = chunk[:self.num_patches - self.count]
                self.count += len(chunk)
                yield chunk
                step += 1
                if step % self.batches_per_log == 0:
                    print(f"batch {step} (pass {self.passes + 1}): {self.count:,} / {self.num_patches:,} patches, "
                          f"{time.perf_counter() - start:.0f} s", flush=True)
                if self.count >= self.num_patches:
                    break
            self.passes += 1
            if self.count == before:
                raise ValueError("the train loader gave no batches")
            if self.passes == 1 and self.count < self.num_patches:
                passes = -(-self.num_patches // self.count)
                print(f"one pass over the train split gives {self.count:,} patches, fewer than "
                      f"{self.num_patches:,}: passing over it again with new crops and patch draws, {passes} passes "
                      f"in all", flush=True)
