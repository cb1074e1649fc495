"""The one training loop. Every method (supervised, MAE, DiffMAE, l-DAE, probes) runs through it.

A model takes ``(clip, label)`` and returns a dict with ``"loss"``; its other 0-d tensors are logged as
metrics. The loop never asks which method it is training.
"""
import math
import time
from dataclasses import dataclass, field

import torch
from fvcore.common.config import CfgNode
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from videodiff.data import build_loader, set_loader_epoch
from videodiff.engine import checkpoint as ckpt
from videodiff.engine.distributed import DistInfo, all_reduce_mean, barrier
from videodiff.engine.evaluate import evaluate, has_split
from videodiff.engine.logging import StatsWriter, Timer, format_eta, logger, memory_mb
from videodiff.engine.precision import autocast_for, uses_grad_scaler
from videodiff.engine.optim import build_optimizer, lr_at, set_lr
from videodiff.engine.seed import seed_everything
from videodiff.models.build import build_model


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    start_epoch: int = 0
    last_checkpoint: str = field(default="")


def build_train_state(cfg: CfgNode, info: DistInfo) -> TrainState:
    """Model + optimizer, restored from the newest checkpoint (auto-resume) or initialised from a file."""
    model = build_model(cfg).to(info.device)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=uses_grad_scaler(cfg, info.device))
    state = TrainState(model, optimizer, scaler)
    latest = ckpt.find_latest_checkpoint(cfg.OUTPUT_DIR) if cfg.TRAIN.AUTO_RESUME else None
    if latest:
        saved = ckpt.resume(latest, model, optimizer, scaler)
        state.start_epoch, state.last_checkpoint = int(saved["epoch"]), latest
        logger.info(f"resumed from {latest}: continuing at epoch {state.start_epoch + 1}")
    elif cfg.TRAIN.CHECKPOINT_FILE_PATH:
        saved = ckpt.load_state(cfg.TRAIN.CHECKPOINT_FILE_PATH)
        ckpt.load_model_state(model, saved["model"], cfg.TRAIN.CHECKPOINT_FILE_PATH)
        logger.info(f"initialised weights from {cfg.TRAIN.CHECKPOINT_FILE_PATH}")
    if info.world_size > 1:
        state.model = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda"
                                              else None)
    return state


def train_step(state: TrainState, batch: dict, cfg: CfgNode, info: DistInfo) -> dict:
    """One optimisation step; returns the model's 0-d outputs as floats (loss first)."""
    clip = batch["clip"].to(info.device, non_blocking=True)
    label = batch["label"].to(info.device, non_blocking=True)
    with autocast_for(cfg, info.device):
        out = state.model(clip, label)
    loss = out["loss"]
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if cfg.SOLVER.CLIP_GRAD > 0:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), cfg.SOLVER.CLIP_GRAD)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return {k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.dim() == 0}


def check_finite(loss: float, epoch: int, it: int, state: TrainState) -> None:
    if not math.isfinite(loss):
        last = state.last_checkpoint or "none yet"
        raise FloatingPointError(f"loss is {loss} at epoch {epoch + 1} iteration {it + 1}; "
                                 f"no checkpoint was changed; last good checkpoint: {last}")


def train_one_epoch(state: TrainState, loader, epoch: int, cfg: CfgNode, info: DistInfo,
                    stats: StatsWriter) -> dict:
    state.model.train()
    iters, timer, start = len(loader), Timer(), time.perf_counter()
    totals: dict = {}
    for it, batch in enumerate(loader):
        data_time = timer.lap()
        lr = lr_at(epoch + it / iters, cfg)
        set_lr(state.optimizer, lr)
        metrics = train_step(state, batch, cfg, info)
        check_finite(float(metrics["loss"]), epoch, it, state)
        step_time = timer.lap() + data_time
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        if (it + 1) % cfg.LOG_PERIOD == 0 or it + 1 == iters:
            avg = {k: float(all_reduce_mean(v)) for k, v in metrics.items()}
            elapsed = time.perf_counter() - start
            eta = elapsed / (it + 1) * ((cfg.SOLVER.MAX_EPOCH - epoch) * iters - it - 1)
            line = dict(split="train", epoch=epoch + 1, iter=it + 1, lr=lr, data_time=round(data_time, 4),
                        step_time=round(step_time, 4), eta=format_eta(eta),
                        mem_mb=round(memory_mb(info.device), 1), **avg)
            stats.write(line, step=epoch * iters + it)
            logger.info(f"epoch {epoch + 1}/{cfg.SOLVER.MAX_EPOCH} iter {it + 1}/{iters} "
                        + " ".join(f"{k} {v:.4f}" for k, v in avg.items())
                        + f" lr {lr:.3e} data {data_time:.3f}s step {step_time:.3f}s eta {format_eta(eta)}")
    return {k: v / max(iters, 1) for k, v in totals.items()}


def train(cfg: CfgNode, info: DistInfo) -> TrainState:
    stats = StatsWriter(cfg.OUTPUT_DIR, info.is_main, cfg.TENSORBOARD.ENABLE)
    state = build_train_state(cfg, info)
    loader = build_loader(cfg, "train", info.rank, info.world_size)
    val_loader = None
    if cfg.TRAIN.EVAL_PERIOD and has_split(cfg, "val"):
        val_loader = build_loader(cfg, "val", info.rank, info.world_size)
    for epoch in range(state.start_epoch, cfg.SOLVER.MAX_EPOCH):
        seed_everything(cfg.RNG_SEED, epoch, info.rank)  # a resumed epoch replays the same randomness
        set_loader_epoch(loader, epoch)
        epoch_avg = train_one_epoch(state, loader, epoch, cfg, info, stats)
        done = epoch + 1
        if done % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or done == cfg.SOLVER.MAX_EPOCH:
            if info.is_main:
                state.last_checkpoint = ckpt.save_checkpoint(
                    cfg.OUTPUT_DIR, done, state.model, state.optimizer, state.scaler, cfg.dump())
                logger.info(f"saved {state.last_checkpoint}")
            barrier()
        if val_loader is not None and (done % cfg.TRAIN.EVAL_PERIOD == 0 or done == cfg.SOLVER.MAX_EPOCH):
            result = evaluate(state.model, val_loader, cfg, info, split="val")
            stats.write(dict(epoch=done, **result), step=done)
        logger.info(f"epoch {done} done: " + " ".join(f"{k} {v:.4f}" for k, v in epoch_avg.items()))
    stats.close()
    return state
