"""Config -> DataLoader for one rank: batch size per rank, samplers, collate, worker seeding.

Batch sizes count *original* samples: a train batch of B items with R repeated-augmentation copies
each reaches the model as ``B * R`` clips (``collate_clips`` flattens R into the batch).
Call ``set_loader_epoch(loader, epoch)`` before iterating each epoch: it reshuffles the sampler and
moves the datasets' per-item random draws to the new epoch.
"""
import random
import signal
from typing import List

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from videodiff.data.build import build_dataset
from videodiff.data.samplers import ResumableDistributedSampler, ShardSampler
from videodiff.data.worker_memory import keep_freed_memory


def collate_clips(items: List[dict]) -> dict:
    """Items ``{"clip": [R, C, T, H, W], "label", "index", "view"}`` -> one batch of ``B*R`` clips.

    Returns ``clip`` ``[B*R, C, T, H, W]`` (the items' dtype: uint8 with DATA_LOADER.UINT8_HANDOVER, normalised
    on the device by ``normalize.ClipNormalizer``) and LongTensors ``label``, ``index``, ``view`` ``[B*R]`` (an
    item's scalars repeated for each of its R copies, copies of one item adjacent), a BoolTensor ``valid``
    ``[B*R]`` (False for val/test placeholders of unreadable files) and ``skipped``: the ``(path, reason)`` pairs
    of every file the items skipped (see ``bad_media.py``), in item order.
    """
    repeats = torch.tensor([item["clip"].shape[0] for item in items])
    batch = {"clip": _cat([item["clip"] for item in items])}
    for key in ("label", "index", "view"):
        values = torch.tensor([int(item[key]) for item in items], dtype=torch.long)
        batch[key] = values.repeat_interleave(repeats)
    valid = torch.tensor([bool(item.get("valid", True)) for item in items])
    batch["valid"] = valid.repeat_interleave(repeats)
    batch["skipped"] = [entry for item in items for entry in item.get("skipped", ())]
    return batch


def _cat(tensors: List[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` along dim 0; in a DataLoader worker, straight into shared memory (as torch's own
    ``default_collate`` does), so sending the batch to the main process copies nothing more."""
    if get_worker_info() is None:
        return torch.cat(tensors)
    first, rows = tensors[0], sum(len(t) for t in tensors)
    storage = first._typed_storage()._new_shared(rows * first[0].numel(), device=first.device)
    return torch.cat(tensors, out=first.new(storage).view(rows, *first.shape[1:]))


# Schedulers (Slurm, Kubernetes, ``timeout``) signal the whole process group. The main process checkpoints on these
# (``engine/preemption.py``) and then ends its workers itself; a worker killed by the same signal first would make the
# main process die with "DataLoader worker killed by signal" before it could save.
SCHEDULER_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def seed_worker(worker_id: int) -> None:
    """Worker set-up: ignore the scheduler signals (above); seed numpy and ``random`` from torch's per-worker seed
    (for third-party transforms; our datasets draw from per-item generators and do not need this); let malloc
    reuse the large per-item buffers (``worker_memory.py``)."""
    for sig in SCHEDULER_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    keep_freed_memory()


def per_rank_batch_size(cfg, split: str, world_size: int) -> int:
    """TRAIN.BATCH_SIZE (train) or TEST.BATCH_SIZE (val/test), a global count, divided over ranks; a train batch
    also over the TRAIN.ACCUM_STEPS micro-batches whose gradients one optimizer step accumulates."""
    train = split == "train"
    key, total = ("TRAIN.BATCH_SIZE", cfg.TRAIN.BATCH_SIZE) if train else ("TEST.BATCH_SIZE", cfg.TEST.BATCH_SIZE)
    accum = cfg.TRAIN.ACCUM_STEPS if train else 1
    parts = world_size * accum
    if total % parts:
        over = f" x TRAIN.ACCUM_STEPS {accum}" if accum > 1 else ""
        raise ValueError(f"{key} = {total} is not divisible by the world size {world_size}{over}; "
                         f"use a multiple of {parts}")
    return total // parts


def build_loader(cfg, split: str, rank: int = 0, world_size: int = 1) -> DataLoader:
    """The DataLoader of ``split`` for ``rank`` of ``world_size`` processes."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    batch_size = per_rank_batch_size(cfg, split, world_size)
    # The main process, too, makes buffers of the same few sizes every batch: the float clip of a uint8 batch
    # normalised on a CPU device (38 MB at batch 4 of 16x224x224, 154 MB at R=4) costs half when freed blocks are
    # reused (``worker_memory.py``; 9.1 -> 4.0 ms per clip, timed alone on the benchmark machine).
    keep_freed_memory()
    dataset = build_dataset(cfg, split)
    train = split == "train"
    if train:
        sampler = ResumableDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                              seed=cfg.RNG_SEED, drop_last=True)
        # One optimizer step takes ACCUM_STEPS loader batches.
        _check_one_batch(len(sampler), batch_size * cfg.TRAIN.ACCUM_STEPS, world_size, len(dataset))
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    base_seed = int(np.random.SeedSequence([cfg.RNG_SEED, rank]).generate_state(1)[0])
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_clips, drop_last=train,
                      worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(base_seed),
                      **loader_options(cfg.DATA_LOADER))


def loader_options(options) -> dict:
    """DATA_LOADER's keys as DataLoader arguments. Pinning needs CUDA; torch refuses persistent workers and a
    prefetch factor without worker processes, so those two apply only with NUM_WORKERS > 0."""
    workers = options.NUM_WORKERS
    return {"num_workers": workers, "pin_memory": options.PIN_MEMORY and torch.cuda.is_available(),
            "persistent_workers": workers > 0 and options.PERSISTENT_WORKERS,
            "prefetch_factor": options.PREFETCH_FACTOR if workers > 0 else None}


def _check_one_batch(per_rank_items: int, batch_size: int, world_size: int, total: int) -> None:
    # Train drops incomplete batches, so a split smaller than one global batch would train on nothing.
    if per_rank_items < batch_size:
        raise ValueError(f"the train split has {total} items, fewer than one batch: TRAIN.BATCH_SIZE = "
                         f"{batch_size * world_size} over {world_size} rank(s)")


def set_loader_epoch(loader: DataLoader, epoch: int, start_iter: int = 0) -> None:
    """Call before iterating ``loader`` for ``epoch``: reshuffles the sampler, re-seeds item draws.

    ``start_iter`` > 0 resumes mid-epoch: the first ``start_iter`` batches of this epoch's order are
    skipped without being loaded, so the resumed epoch neither repeats nor skips samples.
    """
    sampler = getattr(loader, "sampler", None)  # any iterable of batches trains; a DataLoader's parts get the epoch
    for obj in (sampler, getattr(loader, "dataset", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    if start_iter:
        if not hasattr(sampler, "set_start_index"):
            raise ValueError(f"{type(sampler).__name__} cannot resume mid-epoch")
        loader.sampler.set_start_index(start_iter * loader.batch_size)
