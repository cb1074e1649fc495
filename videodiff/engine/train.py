"""The one training loop. Every method (supervised, MAE, DiffMAE, l-DAE, probes) runs through it.

A model takes ``(clip, label)`` and returns a dict with ``"loss"``; its other 0-d tensors are logged as
metrics. The loop never asks which method it is training: features attach as hooks (``hooks.py``).
"""
import math
import time
from typing import List, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from videodiff.data import set_loader_epoch
from videodiff.engine import checkpoint as ckpt
from videodiff.engine.distributed import DistInfo, all_gather_objects, all_reduce_mean, barrier
from videodiff.engine.hooks import Hook
from videodiff.engine.logging import StatsWriter, logger
from videodiff.engine.precision import Precision
from videodiff.engine.seed import rng_state, seed_everything, set_rng_state


class Trainer:
    """Owns the model, optimizer and loader; runs epochs of steps and calls hooks around them.

    Plain arguments only (``engine/build.py`` maps the config to them): ``max_epoch`` epochs over ``loader``;
    ``output_dir`` receives checkpoints (with ``config_text`` stored in each); ``clip_grad`` > 0 clips the
    gradient norm; ``skip_nonfinite_loss`` skips a step with a NaN/Inf loss instead of stopping; ``seed`` makes
    every epoch's randomness a function of (seed, epoch, rank). ``stats`` defaults to ``json_stats.log`` in
    ``output_dir``, written by the main rank.
    """

    def __init__(self, model: nn.Module, loader, optimizer: torch.optim.Optimizer, *, max_epoch: int,
                 info: DistInfo = DistInfo(), output_dir: str = ".", config_text: str = "",
                 precision: Precision = Precision(), clip_grad: float = 0.0, skip_nonfinite_loss: bool = False,
                 seed: int = 0, stats: Optional[StatsWriter] = None):
        self.model, self.loader, self.optimizer, self.info = model, loader, optimizer, info
        self.max_epoch, self.output_dir, self.config_text = max_epoch, output_dir, config_text
        self.precision, self.clip_grad, self.skip_nonfinite_loss, self.seed = precision, clip_grad, \
            skip_nonfinite_loss, seed
        self.stats = stats or StatsWriter(output_dir, info.is_main, tensorboard=False)
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_grad_scaler(info.device))
        self.hooks: List[Hook] = []
        self.start_epoch, self.start_iter, self.epoch, self.iter, self.lr = 0, 0, 0, 0, 0.0
        self.iters_per_epoch = len(loader)  # the full epoch, also when resuming part-way through one
        self.saved_rng: Optional[list] = None
        self.skipped_steps = 0
        self.last_checkpoint = ""
        self.data_time = self.step_time = 0.0
        self.steps_this_run, self._run_start = 0, time.perf_counter()

    def register_hooks(self, hooks: List[Hook]) -> None:
        """Hooks run in the order given (``build.build_hooks`` says why its order matters)."""
        self.hooks.extend(hooks)

    # ------------------------------------------------------------------ state
    def run_seconds(self) -> float:
        return time.perf_counter() - self._run_start

    def resume(self, path: str, weights_only: bool = True) -> None:
        """Continue from checkpoint ``path``: model, optimizer, scaler, position, random state, hook states."""
        saved = ckpt.resume(path, self.model, self.optimizer, self.scaler, weights_only=weights_only)
        self.start_epoch, self.start_iter = int(saved["epoch"]), int(saved.get("iter", 0))
        self.last_checkpoint, self.saved_rng = path, saved.get("rng")
        self.load_hook_states(saved.get("hooks", {}), path)
        logger.info(f"resumed from {path}: continuing at epoch {self.start_epoch + 1}"
                    + (f" iteration {self.start_iter + 1}" if self.start_iter else ""))

    def wrap_distributed(self) -> None:
        if self.info.world_size > 1:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=ids)

    def save_checkpoint(self, epoch: int, iteration: int = 0) -> None:
        """Main rank writes the state after ``epoch`` epochs + ``iteration`` steps; every rank must call this."""
        rng = all_gather_objects(rng_state())  # every rank's generators, so a resumed run replays them
        if self.info.is_main:
            self.last_checkpoint = ckpt.save_checkpoint(
                self.output_dir, epoch, self.model, self.optimizer, self.scaler, self.config_text,
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
        with self.precision.autocast(self.info.device):
            out = self.model(clip, label)
        self.optimizer.zero_grad(set_to_none=True)
        if not self.loss_is_finite(out["loss"]):
            return {}  # TRAIN.SKIP_NONFINITE_LOSS: this step changes nothing
        self.scaler.scale(out["loss"]).backward()
        if self.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.dim() == 0}

    def loss_is_finite(self, loss: torch.Tensor) -> bool:
        """True for a finite loss on every rank; otherwise skip the step (opt-in) or stop with where and why.

        Ranks agree (all-reduce), so either all of them step or none does, and DDP never waits on one.
        """
        value = float(loss.detach())
        bad = torch.tensor([0.0 if math.isfinite(value) else 1.0], device=self.info.device)
        if float(all_reduce_mean(bad)) == 0.0:
            return True
        where = f"epoch {self.epoch + 1} iteration {self.iter + 1}"
        if self.skip_nonfinite_loss:
            self.skipped_steps += 1
            logger.warning(f"non-finite loss ({value}) at {where}: step skipped "
                           f"({self.skipped_steps} so far)")
            return False
        raise FloatingPointError(
            f"loss is {value} at {where}; no checkpoint was changed or deleted; last good checkpoint: "
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
        for self.epoch in range(self.start_epoch, self.max_epoch):
            start_iter = self.start_iter if self.epoch == self.start_epoch else 0
            # Randomness is a function of (seed, epoch, rank): a resumed epoch replays the same draws.
            seed_everything(self.seed, self.epoch, self.info.rank)
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

