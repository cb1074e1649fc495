"""Trainer hooks: features attach to the one loop here instead of branching inside it (detectron2 style).

A hook sees the trainer (``train.Trainer``) at fixed points. ``before_step`` may return a changed batch (mixup
does); with gradient accumulation it sees each of the step's micro-batches. ``after_step`` gets the step's metrics
(empty for a skipped non-finite step); ``trainer.iter`` counts optimizer steps. Hooks take plain
arguments; ``engine/build.py`` reads the config and decides which hooks a run gets, in which order.
"""
from typing import Callable, Dict, Optional

from videodiff.engine.distributed import all_reduce_mean
from videodiff.engine.logging import format_eta, logger, memory_mb
from videodiff.engine.optim import set_lr


class Hook:
    def before_train(self, trainer) -> None:
        pass

    def before_epoch(self, trainer) -> None:
        pass

    def before_step(self, trainer, batch: dict) -> dict:
        return batch

    def after_step(self, trainer, metrics: Dict) -> None:
        pass

    def after_epoch(self, trainer) -> None:
        pass

    def after_train(self, trainer) -> None:
        pass

    def state_dict(self) -> Optional[dict]:
        """State to keep in checkpoints (e.g. EMA weights), or None for a stateless hook."""
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


def every_n_epochs(trainer, period: int) -> bool:
    """True after every ``period``-th epoch and after the last one (``period`` 0: only after the last)."""
    done = trainer.epoch + 1
    return (period > 0 and done % period == 0) or done == trainer.max_epoch


class LRScheduleHook(Hook):
    """Sets the learning rate before every step from ``schedule(fractional epoch)`` (``optim.LRSchedule``)."""

    def __init__(self, schedule: Callable[[float], float]):
        self.schedule = schedule

    def before_step(self, trainer, batch):
        trainer.lr = self.schedule(trainer.epoch + trainer.iter / trainer.iters_per_epoch)
        set_lr(trainer.optimizer, trainer.lr)
        return batch


class LoggingHook(Hook):
    """Every ``period`` steps (and at the epoch's end): rank-averaged metrics to the stats and a progress line."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self, trainer, metrics):
        it, iters = trainer.iter, trainer.iters_per_epoch
        if not metrics or ((it + 1) % self.period and it + 1 != iters):
            return  # empty metrics: a skipped non-finite step
        avg = {k: float(all_reduce_mean(v)) for k, v in metrics.items()}
        remaining = (trainer.max_epoch - trainer.epoch) * iters - it - 1
        eta = trainer.run_seconds() / max(trainer.steps_this_run, 1) * remaining
        line = dict(split="train", epoch=trainer.epoch + 1, iter=it + 1, lr=trainer.lr,
                    data_time=round(trainer.data_time, 4), step_time=round(trainer.step_time, 4),
                    eta=format_eta(eta), mem_mb=round(memory_mb(trainer.info.device), 1), **avg)
        trainer.stats.write(line, step=trainer.epoch * iters + it)
        logger.info(f"epoch {trainer.epoch + 1}/{trainer.max_epoch} iter {it + 1}/{iters} "
                    + " ".join(f"{k} {v:.4f}" for k, v in avg.items())
                    + f" lr {trainer.lr:.3e} data {trainer.data_time:.3f}s step {trainer.step_time:.3f}s "
                      f"eta {format_eta(eta)}")


class CheckpointHook(Hook):
    """Save every ``period`` epochs and after the last one (main rank writes, all wait)."""

    def __init__(self, period: int):
        self.period = period

    def after_epoch(self, trainer):
        if every_n_epochs(trainer, self.period):
            trainer.save_checkpoint(trainer.epoch + 1)


class EvalHook(Hook):
    """Every ``period`` epochs and after the last one: ``eval_fn()`` -> a result dict, written to the stats and
    logged as ``name`` (detectron2's EvalHook). The plain and the EMA validation are two of these."""

    def __init__(self, period: int, eval_fn: Callable[[], dict], name: str = "val"):
        self.period, self.eval_fn, self.name = period, eval_fn, name

    def after_epoch(self, trainer):
        if not every_n_epochs(trainer, self.period):
            return
        done = trainer.epoch + 1
        result = self.eval_fn()
        trainer.stats.write(dict(epoch=done, **result), step=done)
        logger.info(f"{self.name} after epoch {done}: " + " ".join(
            f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
