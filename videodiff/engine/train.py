"""The one training loop. Every method (supervised, MAE, DiffMAE, l-DAE, probes) runs through it.

A model takes ``(clip, label)`` and returns a dict with ``"loss"``; its other 0-d tensors are logged as
metrics. The loop never asks which method it is training: features attach as hooks (``hooks.py``).
"""
import contextlib
import time
from typing import Dict, Iterable, Iterator, List, Optional, Union

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from videodiff.data import set_loader_epoch
from videodiff.data.normalize import ClipNormalizer
from videodiff.engine import checkpoint as ckpt
from videodiff.engine import fsdp
from videodiff.engine.distributed import DistInfo, all_gather_objects, all_reduce_mean, on_main_rank
from videodiff.engine.hooks import Hook
from videodiff.engine.logging import StatsWriter, logger
from videodiff.engine.precision import Precision
from videodiff.engine.seed import rng_state, seed_everything, set_rng_state


def micro_batch_groups(loader: Iterable[dict], size: int) -> Iterator[List[dict]]:
    """The loader's batches in consecutive lists of ``size`` (one optimizer step each); a shorter last list is
    dropped, as the loader drops a short last batch."""
    group: List[dict] = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


def mean_metrics(outs: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Each 0-d output averaged over the micro-batches (one micro-batch: the outputs themselves)."""
    if len(outs) == 1:
        return outs[0]
    return {k: torch.stack([out[k].float() for out in outs]).mean() for k in outs[0]}


class Trainer:
    """Owns the model, optimizer and loader; runs epochs of steps and calls hooks around them.

    Plain arguments only (``engine/build.py`` maps the config to them): ``max_epoch`` epochs over ``loader``;
    ``output_dir`` receives checkpoints (with ``config_text`` stored in each); ``clip_grad`` > 0 clips the
    gradient norm; ``skip_nonfinite_loss`` skips a step with a NaN/Inf loss instead of stopping; ``seed`` makes
    every epoch's randomness a function of (seed, epoch, rank); ``max_consecutive_skips`` bounds how many
    non-finite steps in a row are skipped before the run stops. ``stats`` defaults to ``json_stats.log`` in
    ``output_dir``, written by the main rank. ``normalize`` (DATA.MEAN / STD) turns the loader's uint8 clips into
    normalised float32 on the device as each batch arrives (``data/normalize.py``). ``accum_steps`` > 1 accumulates
    the gradients of that many loader batches (micro-batches) into each optimizer step; an iteration is one step.
    ``parallel`` (a world of more than one): "ddp" replicates the model on every rank, "fsdp" shards weights,
    gradients and optimizer state over the ranks (``engine/fsdp.py``).
    """

    def __init__(self, model: nn.Module, loader, optimizer: torch.optim.Optimizer, *, max_epoch: int,
                 info: DistInfo = DistInfo(), output_dir: str = ".", config_text: str = "",
                 precision: Precision = Precision(), clip_grad: float = 0.0, skip_nonfinite_loss: bool = False,
                 max_consecutive_skips: int = 10, seed: int = 0, stats: Optional[StatsWriter] = None,
                 normalize: ClipNormalizer = ClipNormalizer(), accum_steps: int = 1, parallel: str = "ddp"):
        self.model, self.loader, self.optimizer, self.info = model, loader, optimizer, info
        self.accum_steps, self.parallel = accum_steps, parallel
        self.max_epoch, self.output_dir, self.config_text = max_epoch, output_dir, config_text
        self.precision, self.clip_grad, self.seed = precision, clip_grad, seed
        self.skip_nonfinite_loss, self.max_consecutive_skips = skip_nonfinite_loss, max_consecutive_skips
        self.stats = stats or StatsWriter(output_dir, info.is_main, tensorboard=False)
        self.normalize = normalize
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision.needs_grad_scaler(info.device))
        self.hooks: List[Hook] = []
        self.start_epoch, self.start_iter, self.epoch, self.iter, self.lr = 0, 0, 0, 0, 0.0
        # Iterations count optimizer steps (schedule, logging, checkpoint names), each ``accum_steps`` loader batches;
        # the full epoch, also when resuming part-way through one.
        self.iters_per_epoch = len(loader) // accum_steps
        if accum_steps < 1 or not self.iters_per_epoch:
            raise ValueError(f"accum_steps = {accum_steps}: expected 1 .. the loader's {len(loader)} batches per epoch")
        self.saved_rng: Optional[list] = None
        self.skipped_steps = self.consecutive_skips = 0
        self.last_checkpoint = ""
        self.data_time = self.step_time = 0.0
        self.steps_this_run, self._run_start = 0, time.perf_counter()

    def register_hooks(self, hooks: List[Hook]) -> None:
        """Hooks run in the order given (``build.build_hooks`` says why its order matters)."""
        self.hooks.extend(hooks)

    # ------------------------------------------------------------------ state
    def run_seconds(self) -> float:
        return time.perf_counter() - self._run_start

    def resume(self, path: str, weights_only: bool = True, state: Optional[dict] = None) -> None:
        """Continue from checkpoint ``path`` (or its already-read ``state``): model, optimizer, scaler, position,
        random state, hook states."""
        saved = ckpt.resume(path, self.model, self.optimizer, self.scaler, weights_only=weights_only, state=state)
        self.start_epoch, self.start_iter = int(saved["epoch"]), int(saved.get("iter", 0))
        self.last_checkpoint, self.saved_rng = path, saved.get("rng")
        self.load_hook_states(saved.get("hooks", {}), path)
        logger.info(f"resumed from {path}: continuing at epoch {self.start_epoch + 1}"
                    + (f" iteration {self.start_iter + 1}" if self.start_iter else ""))

    def wrap_distributed(self) -> None:
        """DDP or FSDP over the ranks (``parallel``). Call after ``resume``, which loads into the plain model."""
        if self.parallel not in fsdp.PARALLEL_MODES:
            raise ValueError(f"parallel = {self.parallel!r}: expected one of {', '.join(fsdp.PARALLEL_MODES)}")
        if self.info.world_size > 1 and self.parallel == "fsdp":
            logger.info(fsdp.describe(self.model, self.info.world_size))
            self.model = fsdp.shard_model(self.model, self.optimizer)
        elif self.info.world_size > 1:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=ids)

    def save_checkpoint(self, epoch: int, iteration: int = 0) -> None:
        """Main rank writes the state after ``epoch`` epochs + ``iteration`` steps; every rank must call this.

        Non-finite weights are never saved (the run stops naming the last good checkpoint), and a failed write
        stops every rank with the main rank's one-line reason (``checkpoint.save_checkpoint``)."""
        if not torch.isfinite(nn.utils.get_total_norm([p.detach() for p in self.model.parameters()])):
            raise FloatingPointError(f"the weights are not finite after epoch {epoch}"
                                     + (f" iteration {iteration}" if iteration else "") + "; not saved; last good "
                                     f"checkpoint: {self.last_checkpoint or 'none yet'}")
        rng = all_gather_objects(rng_state())  # every rank's generators, so a resumed run replays them
        model, optimizer = self.model, self.optimizer
        if fsdp.is_sharded(self.model):  # the full states, gathered by every rank, in the file DDP writes
            model, optimizer = fsdp.full_states(self.model, self.optimizer)

        def write() -> str:
            return ckpt.save_checkpoint(self.output_dir, epoch, model, optimizer, self.scaler,
                                        self.config_text, extra={"hooks": self.hook_states(), "rng": rng},
                                        iteration=iteration)

        path = on_main_rank(write, (ckpt.CheckpointError,))
        if path:
            self.last_checkpoint = path
            logger.info(f"saved {path}")

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
    def step(self, batch: Union[dict, Iterable[dict]], micro_steps: int = 1) -> dict:
        """One optimisation step on ``batch``, or on ``micro_steps`` micro-batches (an iterable, read one at a time)
        whose gradients it accumulates: each micro-loss is scaled by 1 / ``micro_steps``, so the step is the one
        their concatenation would give. Returns the model's 0-d outputs (loss first; each the mean over the
        micro-batches) and ``grad_norm``, or {} when a non-finite step was skipped (``skip_nonfinite_loss``)."""
        micro_batches = [batch] if isinstance(batch, dict) else batch
        self.optimizer.zero_grad(set_to_none=True)
        outs = [self.forward_backward(b, micro_steps, sync=i + 1 == micro_steps) for i, b in enumerate(micro_batches)]
        if len(outs) != micro_steps:
            raise ValueError(f"step got {len(outs)} micro-batches, expected micro_steps = {micro_steps}")
        out = mean_metrics(outs)
        self.scaler.unscale_(self.optimizer)  # a no-op without fp16 loss scaling
        grad_norm = self.gradient_norm()
        if not self.step_is_finite(out["loss"], grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            return {}  # this step changes nothing
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return dict(out, grad_norm=grad_norm)

    def forward_backward(self, batch: dict, micro_steps: int, sync: bool) -> Dict[str, torch.Tensor]:
        """Forward and backward of one (micro-)batch, the loss scaled by 1 / ``micro_steps``; under DDP the gradients
        are all-reduced only when ``sync`` (the last micro-batch). Returns the output's 0-d tensors, detached, so
        the rest of the output is freed before the next micro-batch."""
        clip = batch["clip"].to(self.info.device, non_blocking=True)
        label = batch["label"].to(self.info.device, non_blocking=True)
        with self.gradient_sync(sync):
            with self.precision.autocast(self.info.device):
                out = self.model(clip, label)
            self.scaler.scale(out["loss"] / micro_steps).backward()
        return {k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.dim() == 0}

    def gradient_sync(self, sync: bool):
        """A context in which DDP all-reduces the gradients (``sync``) or only accumulates them (``no_sync``)."""
        if sync or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def gradient_norm(self) -> torch.Tensor:
        """Total gradient norm (0-d, on the device), after clipping to ``clip_grad`` when that is > 0."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.info.device)
        # A sharded model's norm is a DTensor; the finite check and the logs take a plain tensor.
        if self.clip_grad > 0:
            return fsdp.full_tensor(nn.utils.clip_grad_norm_(params, self.clip_grad)).detach()  # norm before clipping
        return fsdp.full_tensor(nn.utils.get_total_norm([p.grad for p in params])).detach()

    def step_is_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """True when the loss and the gradient are finite on every rank; else skip the step (opt-in, at most
        ``max_consecutive_skips`` in a row) or stop, naming where, what and the last good checkpoint.

        A finite loss can still give an exploding gradient whose update leaves every weight NaN, so both are checked.
        With fp16 loss scaling, infinite gradients are the scaler's business (it skips and lowers the scale).
        Ranks agree with one all-reduce, so either all of them step or none does, and DDP never waits on one.
        """
        loss_bad = ~torch.isfinite(loss.detach().float())
        grad_bad = torch.zeros_like(loss_bad) if self.scaler.is_enabled() else ~torch.isfinite(grad_norm.float())
        flags = all_reduce_mean(torch.stack([loss_bad, grad_bad.to(loss_bad.device)]).float()).tolist()  # one sync
        loss_bad, grad_bad = flags[0] > 0, flags[1] > 0
        if not (loss_bad or grad_bad):
            self.consecutive_skips = 0
            return True
        what = f"loss is {float(loss.detach())}" if loss_bad else f"gradient norm is {float(grad_norm)}"
        where = f"epoch {self.epoch + 1} iteration {self.iter + 1}"
        last = f"last good checkpoint: {self.last_checkpoint or 'none yet'}"
        if not self.skip_nonfinite_loss:
            raise FloatingPointError(f"{what} at {where}; no checkpoint was changed or deleted; {last} "
                                     f"(TRAIN.SKIP_NONFINITE_LOSS True skips such steps instead)")
        self.skipped_steps += 1
        self.consecutive_skips += 1
        if self.consecutive_skips > self.max_consecutive_skips:
            raise FloatingPointError(f"{what} at {where}, and the {self.max_consecutive_skips} steps before it were "
                                     f"skipped too: the weights are likely broken; stopping; {last}")
        logger.warning(f"non-finite {what.split(' is ')[0]} ({what.split(' is ')[1]}) at {where}: step skipped "
                       f"({self.skipped_steps} so far)")
        return False

    def clip_on_device(self, batch: dict) -> dict:
        """The batch with its clip on the device, normalised (``data/normalize.py``). Runs before any hook, so
        mixup and the model see the float clips of the old float handover; ``step`` then moves nothing."""
        return dict(batch, clip=self.normalize(batch["clip"], self.info.device))

    def prepare(self, batch: dict) -> dict:
        """A loader batch as the model sees it: the clip on the device, then every hook's ``before_step``."""
        batch = self.clip_on_device(batch)
        for hook in self.hooks:
            batch = hook.before_step(self, batch)
        return batch

    def run_epoch(self, start_iter: int = 0) -> None:
        self.model.train()
        tick = time.perf_counter()
        for self.iter, micro_batches in enumerate(micro_batch_groups(self.loader, self.accum_steps), start=start_iter):
            self.data_time = time.perf_counter() - tick
            # Each micro-batch is prepared just before its forward pass, so only one at a time is on the device.
            metrics = self.step(map(self.prepare, micro_batches), micro_steps=len(micro_batches))
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
            set_loader_epoch(self.loader, self.epoch, start_iter * self.accum_steps)  # skips loader batches
            for hook in self.hooks:
                hook.before_epoch(self)
            self.run_epoch(start_iter)
            for hook in self.hooks:
                hook.after_epoch(self)
        for hook in self.hooks:
            hook.after_train(self)
        self.stats.close()

