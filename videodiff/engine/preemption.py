"""Surviving schedulers: checkpoint on SIGTERM / SIGUSR1 and exit cleanly; periodic mid-epoch checkpoints.

Schedulers (SLURM, Kubernetes, spot instances) warn a job with SIGTERM or SIGUSR1 before killing it. The
handler only sets a flag; the flag is checked between steps (all ranks agree via all-reduce), so a
checkpoint is never written from inside a signal handler or half-way through an optimizer step.
Resuming is the same command again (TRAIN.AUTO_RESUME).
"""
import signal

import torch

from videodiff.data.loader import SCHEDULER_SIGNALS
from videodiff.engine.distributed import all_reduce_mean
from videodiff.engine.hooks import Hook
from videodiff.engine.logging import logger

SIGNALS = SCHEDULER_SIGNALS  # the loader's workers ignore them, so the main process is the one that answers


class Preempted(SystemExit):
    """Raised after the pre-emption checkpoint is written; exits the process with status 0."""

    def __init__(self, message: str):
        super().__init__(0)
        self.message = message


class PreemptionHook(Hook):
    def __init__(self):
        self.requested = 0
        self._previous = {}

    def _on_signal(self, signum, frame):
        self.requested = signum

    def before_train(self, trainer):
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def after_train(self, trainer):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def after_step(self, trainer, metrics):
        flag = torch.tensor([float(self.requested)], device=trainer.info.device)
        if float(all_reduce_mean(flag)) == 0.0:
            return
        trainer.save_position()
        name = signal.Signals(self.requested).name if self.requested else "a signal on another rank"
        message = f"pre-empted by {name}: saved {trainer.last_checkpoint or 'on rank 0'}; run the same command to resume"
        logger.warning(message)
        self.after_train(trainer)
        raise Preempted(message)


class IterCheckpointHook(Hook):
    """Every TRAIN.CHECKPOINT_ITER_PERIOD steps, a mid-epoch checkpoint (the epoch end has its own)."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self, trainer, metrics):
        done = trainer.iter + 1
        if done % self.period == 0 and done != trainer.iters_per_epoch:
            trainer.save_checkpoint(trainer.epoch, done)
