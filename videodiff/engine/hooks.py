"""Trainer hooks: features attach to the one loop here instead of branching inside it (detectron2 style).

A hook sees the trainer at fixed points. ``before_step`` may return a changed batch (mixup does);
``after_step`` gets the step's metrics. Order matters only where stated in ``default_hooks``.
"""
from typing import TYPE_CHECKING, Dict, List, Optional

from videodiff.engine.distributed import all_reduce_mean
from videodiff.engine.evaluate import evaluate
from videodiff.engine.logging import format_eta, logger, memory_mb
from videodiff.engine.optim import lr_at, set_lr

if TYPE_CHECKING:
    from videodiff.engine.train import Trainer


class Hook:
    def before_train(self, trainer: "Trainer") -> None:
        pass

    def before_epoch(self, trainer: "Trainer") -> None:
        pass

    def before_step(self, trainer: "Trainer", batch: dict) -> dict:
        return batch

    def after_step(self, trainer: "Trainer", metrics: Dict) -> None:
        pass

    def after_epoch(self, trainer: "Trainer") -> None:
        pass

    def after_train(self, trainer: "Trainer") -> None:
        pass

    def state_dict(self) -> Optional[dict]:
        """State to keep in checkpoints (e.g. EMA weights), or None for a stateless hook."""
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


class LRScheduleHook(Hook):
    """Per-iteration warmup + cosine; a pure function of the position, so resumed runs match."""

    def before_step(self, trainer, batch):
        trainer.lr = lr_at(trainer.epoch + trainer.iter / trainer.iters_per_epoch, trainer.cfg)
        set_lr(trainer.optimizer, trainer.lr)
        return batch


class LoggingHook(Hook):
    """Every LOG_PERIOD steps: rank-averaged metrics to json_stats.log / tensorboard and a progress line."""

    def after_step(self, trainer, metrics):
        it, iters, cfg = trainer.iter, trainer.iters_per_epoch, trainer.cfg
        if not metrics or ((it + 1) % cfg.LOG_PERIOD and it + 1 != iters):
            return  # empty metrics: a skipped non-finite step
        avg = {k: float(all_reduce_mean(v)) for k, v in metrics.items()}
        done_steps = trainer.steps_this_run
        remaining = (cfg.SOLVER.MAX_EPOCH - trainer.epoch) * iters - it - 1
        eta = trainer.run_seconds() / max(done_steps, 1) * remaining
        line = dict(split="train", epoch=trainer.epoch + 1, iter=it + 1, lr=trainer.lr,
                    data_time=round(trainer.data_time, 4), step_time=round(trainer.step_time, 4),
                    eta=format_eta(eta), mem_mb=round(memory_mb(trainer.info.device), 1), **avg)
        trainer.stats.write(line, step=trainer.epoch * iters + it)
        logger.info(f"epoch {trainer.epoch + 1}/{cfg.SOLVER.MAX_EPOCH} iter {it + 1}/{iters} "
                    + " ".join(f"{k} {v:.4f}" for k, v in avg.items())
                    + f" lr {trainer.lr:.3e} data {trainer.data_time:.3f}s step {trainer.step_time:.3f}s "
                      f"eta {format_eta(eta)}")


class CheckpointHook(Hook):
    """Save every TRAIN.CHECKPOINT_PERIOD epochs and at the last epoch (main rank writes, all wait)."""

    def after_epoch(self, trainer):
        done, cfg = trainer.epoch + 1, trainer.cfg
        if done % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or done == cfg.SOLVER.MAX_EPOCH:
            trainer.save_checkpoint(done)


class EvalHook(Hook):
    """Validation loss / accuracy every TRAIN.EVAL_PERIOD epochs and after the last one."""

    def __init__(self, loader):
        self.loader = loader

    def after_epoch(self, trainer):
        done, cfg = trainer.epoch + 1, trainer.cfg
        if done % cfg.TRAIN.EVAL_PERIOD == 0 or done == cfg.SOLVER.MAX_EPOCH:
            result = evaluate(trainer.model, self.loader, cfg, trainer.info, split="val")
            trainer.stats.write(dict(epoch=done, **result), step=done)
            logger.info(f"val after epoch {done}: " + " ".join(
                f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))


def default_hooks(cfg, val_loader=None) -> List[Hook]:
    """The schedule runs before every step; checkpointing runs before evaluation (a crash in eval loses nothing)."""
    from videodiff.engine.media_hook import SkippedMediaHook
    from videodiff.engine.preemption import IterCheckpointHook, PreemptionHook

    hooks: List[Hook] = [LRScheduleHook(), LoggingHook(), CheckpointHook()]
    hooks.append(SkippedMediaHook(cfg.DATA.MAX_FAILED_FRACTION))  # after the epoch checkpoint: its stop loses nothing
    if cfg.MIXUP.ENABLE:
        from videodiff.engine.mixup_hook import MixupHook, build_mixup

        hooks.append(MixupHook(build_mixup(cfg)))
    if cfg.MODEL_EMA.ENABLE:  # before any hook that checkpoints in after_step, so saved EMA has every update
        from videodiff.engine.ema_hook import EmaHook

        hooks.append(EmaHook(cfg.MODEL_EMA.DECAY, val_loader))
    if cfg.TRAIN.CHECKPOINT_ITER_PERIOD:
        hooks.append(IterCheckpointHook(cfg.TRAIN.CHECKPOINT_ITER_PERIOD))
    hooks.append(PreemptionHook())  # after the others: a pre-empted step is fully logged and counted
    if val_loader is not None:
        hooks.append(EvalHook(val_loader))
    return hooks
