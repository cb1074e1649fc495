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
from videodiff.engine.distributed import DistInfo, all_gather_objects, all_reduce_mean, barrier
from videodiff.engine.evaluate import has_split
from videodiff.engine.hooks import Hook, default_hooks
from videodiff.engine.logging import StatsWriter, logger
from videodiff.engine.optim import build_optimizer
from videodiff.engine.precision import autocast_for, uses_grad_scaler
from videodiff.engine.seed import rng_state, seed_everything, set_rng_state
from videodiff.models.build import build_model
from videodiff.models.pretrained import load_pretrained


class Trainer:
    """Owns the model, optimizer and loader; runs epochs of steps and calls hooks around them."""

    def __init__(self, cfg: CfgNode, info: DistInfo, model: nn.Module, loader, hooks: List[Hook],
                 stats: Optional[StatsWriter] = None):
        self.cfg, self.info, self.loader, self.hooks = cfg, info, loader, hooks
        self.stats = stats or StatsWriter(cfg.OUTPUT_DIR, info.is_main, cfg.TENSORBOARD.ENABLE)
        self.model = model.to(info.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=uses_grad_scaler(cfg, info.device))
        self.start_epoch, self.start_iter, self.epoch, self.iter, self.lr = 0, 0, 0, 0, 0.0
        self.iters_per_epoch = len(loader)  # the full epoch, also when resuming part-way through one
        self.saved_rng: Optional[list] = None
        self.skipped_steps = 0
        self.last_checkpoint = ""
        self.data_time = self.step_time = 0.0
        self.steps_this_run, self._run_start = 0, time.perf_counter()

    # ------------------------------------------------------------------ state
    def run_seconds(self) -> float:
        return time.perf_counter() - self._run_start

    def restore(self) -> None:
        """Auto-resume from the newest checkpoint, else initialise weights from TRAIN.CHECKPOINT_FILE_PATH."""
        cfg = self.cfg
        latest = ckpt.find_latest_checkpoint(cfg.OUTPUT_DIR) if cfg.TRAIN.AUTO_RESUME else None
        if latest:
            saved = ckpt.resume(latest, self.model, self.optimizer, self.scaler,
                                weights_only=cfg.TRAIN.CHECKPOINT_WEIGHTS_ONLY)
            self.start_epoch, self.start_iter = int(saved["epoch"]), int(saved.get("iter", 0))
            self.last_checkpoint, self.saved_rng = latest, saved.get("rng")
            self.load_hook_states(saved.get("hooks", {}), latest)
            logger.info(f"resumed from {latest}: continuing at epoch {self.start_epoch + 1}"
                        + (f" iteration {self.start_iter + 1}" if self.start_iter else ""))
        elif cfg.TRAIN.CHECKPOINT_FILE_PATH:
            saved = ckpt.load_state(cfg.TRAIN.CHECKPOINT_FILE_PATH, cfg.TRAIN.CHECKPOINT_WEIGHTS_ONLY)
            # Not strict: a pretraining checkpoint's decoder is dropped, its positions resized (models/pretrained.py).
            report = load_pretrained(self.model, saved, cfg.TRAIN.CHECKPOINT_FILE_PATH, cfg.TRAIN.CHECKPOINT_DROP_HEAD)
            logger.info(report.summary())

    def wrap_distributed(self) -> None:
        if self.info.world_size > 1:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=ids)

    def save_checkpoint(self, epoch: int, iteration: int = 0) -> None:
        """Main rank writes the state after ``epoch`` epochs + ``iteration`` steps; every rank must call this."""
        rng = all_gather_objects(rng_state())  # every rank's generators, so a resumed run replays them
        if self.info.is_main:
            self.last_checkpoint = ckpt.save_checkpoint(
                self.cfg.OUTPUT_DIR, epoch, self.model, self.optimizer, self.scaler, self.cfg.dump(),
                extra={"hooks": self.hook_states(), "rng": rng}, iteration=iteration)
            logger.info(f"saved {self.last_checkpoint}")
        barrier()

    def save_position(self) -> None:
        """Checkpoint right after the current step (mid-epoch, or end of epoch after its last step)."""
        if self.iter + 1 == self.iters_per_epoch:
            self.save_checkpoint(self.epoch + 1)
        else:
            self.save_checkpoint(self.epoch, self.iter + 1)

    def restore_rng(self) -> None:
        """Continue the saved random streams mid-epoch (same world size), else keep the epoch seeding."""
        if self.saved_rng and len(self.saved_rng) == self.info.world_size:
            set_rng_state(self.saved_rng[self.info.rank])
        else:
            logger.warning("resuming mid-epoch without this world size's saved random state: model-side "
                           "randomness (masks, noise, drop path) differs from an uninterrupted run")

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
        self.optimizer.zero_grad(set_to_none=True)
        if not self.loss_is_finite(out["loss"]):
            return {}  # TRAIN.SKIP_NONFINITE_LOSS: this step changes nothing
        self.scaler.scale(out["loss"]).backward()
        if self.cfg.SOLVER.CLIP_GRAD > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.SOLVER.CLIP_GRAD)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.dim() == 0}

    def loss_is_finite(self, loss: torch.Tensor) -> bool:
        """True for a finite loss on every rank; otherwise skip the step (opt-in) or stop with where and why.

        Ranks agree (all-reduce), so either all of them step or none does, and DDP never waits on one.
        """
        bad = torch.tensor([0.0 if math.isfinite(float(loss)) else 1.0], device=self.info.device)
        if float(all_reduce_mean(bad)) == 0.0:
            return True
        where = f"epoch {self.epoch + 1} iteration {self.iter + 1}"
        if self.cfg.TRAIN.SKIP_NONFINITE_LOSS:
            self.skipped_steps += 1
            logger.warning(f"non-finite loss ({float(loss)}) at {where}: step skipped "
                           f"({self.skipped_steps} so far)")
            return False
        raise FloatingPointError(
            f"loss is {float(loss)} at {where}; no checkpoint was changed or deleted; last good checkpoint: "
            f"{self.last_checkpoint or 'none yet'} (TRAIN.SKIP_NONFINITE_LOSS True skips such steps instead)")

    def run_epoch(self, start_iter: int = 0) -> None:
        self.model.train()
        tick = time.perf_counter()
        for self.iter, batch in enumerate(self.loader, start=start_iter):
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
            start_iter = self.start_iter if self.epoch == self.start_epoch else 0
            # Randomness is a function of (seed, epoch, rank): a resumed epoch replays the same draws.
            seed_everything(self.cfg.RNG_SEED, self.epoch, self.info.rank)
            if start_iter:
                self.restore_rng()
            set_loader_epoch(self.loader, self.epoch, start_iter)
            for hook in self.hooks:
                hook.before_epoch(self)
            self.run_epoch(start_iter)
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
