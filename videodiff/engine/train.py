"""The one training loop. Every method (supervised, MAE, DiffMAE, l-DAE, probes) runs through it.

A model takes ``(clip, label)`` and returns a dict with ``"loss"``; its other 0-d tensors are logged as
metrics. The loop never asks which method it is training: features attach as hooks (``hooks.py``).
"""
import math
import time
from typing import List, Optional

import torch
from fvcore.common.config import CfgNode
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from videodiff.data import build_loader, set_loader_epoch
from videodiff.engine import checkpoint as ckpt
from videodiff.engine.distributed import DistInfo, barrier
from videodiff.engine.evaluate import has_split
from videodiff.engine.hooks import Hook, default_hooks
from videodiff.engine.logging import StatsWriter, logger
from videodiff.engine.optim import build_optimizer
from videodiff.engine.precision import autocast_for, uses_grad_scaler
from videodiff.engine.seed import seed_everything
from videodiff.models.build import build_model


class Trainer:
    """Owns the model, optimizer and loader; runs epochs of steps and calls hooks around them."""

    def __init__(self, cfg: CfgNode, info: DistInfo, model: nn.Module, loader, hooks: List[Hook],
                 stats: Optional[StatsWriter] = None):
        self.cfg, self.info, self.loader, self.hooks = cfg, info, loader, hooks
        self.stats = stats or StatsWriter(cfg.OUTPUT_DIR, info.is_main, cfg.TENSORBOARD.ENABLE)
        self.model = model.to(info.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=uses_grad_scaler(cfg, info.device))
        self.start_epoch, self.epoch, self.iter, self.lr = 0, 0, 0, 0.0
        self.last_checkpoint = ""
        self.data_time = self.step_time = 0.0
        self.steps_this_run, self._run_start = 0, time.perf_counter()

    # ------------------------------------------------------------------ state
    @property
    def iters_per_epoch(self) -> int:
        return len(self.loader)

    def run_seconds(self) -> float:
        return time.perf_counter() - self._run_start

    def restore(self) -> None:
        """Auto-resume from the newest checkpoint, else initialise weights from TRAIN.CHECKPOINT_FILE_PATH."""
        cfg = self.cfg
        latest = ckpt.find_latest_checkpoint(cfg.OUTPUT_DIR) if cfg.TRAIN.AUTO_RESUME else None
        if latest:
            saved = ckpt.resume(latest, self.model, self.optimizer, self.scaler)
            self.start_epoch, self.last_checkpoint = int(saved["epoch"]), latest
            self.load_hook_states(saved.get("hooks", {}), latest)
            logger.info(f"resumed from {latest}: continuing at epoch {self.start_epoch + 1}")
        elif cfg.TRAIN.CHECKPOINT_FILE_PATH:
            saved = ckpt.load_state(cfg.TRAIN.CHECKPOINT_FILE_PATH)
            ckpt.load_model_state(self.model, saved["model"], cfg.TRAIN.CHECKPOINT_FILE_PATH)
            logger.info(f"initialised weights from {cfg.TRAIN.CHECKPOINT_FILE_PATH}")

    def wrap_distributed(self) -> None:
        if self.info.world_size > 1:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=ids)

    def save_checkpoint(self, epoch: int) -> None:
        """Main rank writes ``checkpoint_epoch_{epoch}``; every rank waits for it."""
        if self.info.is_main:
            self.last_checkpoint = ckpt.save_checkpoint(self.cfg.OUTPUT_DIR, epoch, self.model, self.optimizer,
                                                        self.scaler, self.cfg.dump(),
                                                        extra={"hooks": self.hook_states()})
            logger.info(f"saved {self.last_checkpoint}")
        barrier()

    def hook_states(self) -> dict:
        states = {type(h).__name__: h.state_dict() for h in self.hooks}
        return {name: state for name, state in states.items() if state is not None}

    def load_hook_states(self, states: dict, path: str) -> None:
        for hook in self.hooks:
            name = type(hook).__name__
            if hook.state_dict() is not None:
                if name not in states:
                    raise ckpt.CheckpointError(f"checkpoint {path} has no state for {name}; it was written by a "
                                               f"run without it")
                hook.load_state_dict(states[name])

    # ------------------------------------------------------------------ loop
    def step(self, batch: dict) -> dict:
        """One optimisation step; returns the model's 0-d outputs (loss first)."""
        clip = batch["clip"].to(self.info.device, non_blocking=True)
        label = batch["label"].to(self.info.device, non_blocking=True)
        with autocast_for(self.cfg, self.info.device):
            out = self.model(clip, label)
        self.check_finite(out["loss"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        if self.cfg.SOLVER.CLIP_GRAD > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.SOLVER.CLIP_GRAD)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.dim() == 0}

    def check_finite(self, loss: torch.Tensor) -> None:
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss is {value} at epoch {self.epoch + 1} iteration {self.iter + 1}; no checkpoint was changed; "
                f"last good checkpoint: {self.last_checkpoint or 'none yet'}")

    def run_epoch(self) -> None:
        self.model.train()
        tick = time.perf_counter()
        for self.iter, batch in enumerate(self.loader):
            self.data_time = time.perf_counter() - tick
            for hook in self.hooks:
                batch = hook.before_step(self, batch)
            metrics = self.step(batch)
            self.step_time = time.perf_counter() - tick
            self.steps_this_run += 1
            for hook in self.hooks:
                hook.after_step(self, metrics)
            tick = time.perf_counter()

    def train(self) -> None:
        for hook in self.hooks:
            hook.before_train(self)
        for self.epoch in range(self.start_epoch, self.cfg.SOLVER.MAX_EPOCH):
            # Randomness is a function of (seed, epoch, rank): a resumed epoch replays the same draws.
            seed_everything(self.cfg.RNG_SEED, self.epoch, self.info.rank)
            set_loader_epoch(self.loader, self.epoch)
            for hook in self.hooks:
                hook.before_epoch(self)
            self.run_epoch()
            for hook in self.hooks:
                hook.after_epoch(self)
        for hook in self.hooks:
            hook.after_train(self)
        self.stats.close()


def build_trainer(cfg: CfgNode, info: DistInfo) -> Trainer:
    """Model, loaders and the default hooks for ``cfg``, restored from the newest checkpoint if any."""
    seed_everything(cfg.RNG_SEED, 0, 0)  # identical initial weights on every rank
    model = build_model(cfg)
    loader = build_loader(cfg, "train", info.rank, info.world_size)
    val_loader = None
    if cfg.TRAIN.EVAL_PERIOD and has_split(cfg, "val"):
        val_loader = build_loader(cfg, "val", info.rank, info.world_size)
    trainer = Trainer(cfg, info, model, loader, default_hooks(cfg, val_loader))
    trainer.restore()
    trainer.wrap_distributed()
    return trainer


def train(cfg: CfgNode, info: DistInfo) -> Trainer:
    trainer = build_trainer(cfg, info)
    trainer.train()
    return trainer
