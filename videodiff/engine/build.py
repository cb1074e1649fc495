"""Config -> a ready Trainer: the one place where the training loop's settings are read from the config.

``build_trainer`` builds model, loaders and optimizer, maps the config to the plain arguments of ``Trainer`` and of
each hook, assembles the hooks in order, restores the newest checkpoint (or initial weights), and wraps DDP or FSDP
(TRAIN.PARALLEL).
"""
from typing import List, Optional

from fvcore.common.config import CfgNode
from timm.data import Mixup

from videodiff.config import get_defaults
from videodiff.data import build_loader
from videodiff.data.normalize import ClipNormalizer
from videodiff.engine import checkpoint as ckpt
from videodiff.engine.compile import compile_model
from videodiff.engine.distributed import DistInfo, on_main_rank
from videodiff.engine.ema_hook import EmaHook
from videodiff.engine.evaluate import evaluate, has_split
from videodiff.engine.fsdp import unsharded
from videodiff.engine.hooks import CheckpointHook, EvalHook, Hook, LoggingHook, LRScheduleHook
from videodiff.engine.logging import StatsWriter, logger
from videodiff.engine.media_hook import SkippedMediaHook
from videodiff.engine.mixup_hook import MixupHook
from videodiff.engine.optim import build_optimizer, lr_schedule
from videodiff.engine.precision import precision_from_cfg
from videodiff.engine.preemption import IterCheckpointHook, PreemptionHook
from videodiff.engine.seed import seed_everything
from videodiff.engine.train import Trainer
from videodiff.models.build import build_model
from videodiff.models.pretrained import load_pretrained


def build_mixup(cfg: CfgNode) -> Mixup:
    m = cfg.MIXUP
    return Mixup(mixup_alpha=m.ALPHA, cutmix_alpha=m.CUTMIX_ALPHA, prob=m.PROB, switch_prob=m.SWITCH_PROB,
                 mode="batch", label_smoothing=m.LABEL_SMOOTH_VALUE, num_classes=cfg.MODEL.NUM_CLASSES)


def build_hooks(cfg: CfgNode, trainer: Trainer) -> List[Hook]:
    """The run's hooks, in the order they must run:

    the schedule before every step; checkpointing before evaluation (a crash in evaluation loses nothing); the
    bad-media check after the epoch checkpoint (its stop loses nothing); EMA before any hook that checkpoints in
    ``after_step`` (saved EMA has every update); pre-emption after the others (a pre-empted step is fully logged
    and counted); validation, then the EMA's validation, last.
    """
    hooks: List[Hook] = [LRScheduleHook(lr_schedule(cfg)), LoggingHook(cfg.LOG_PERIOD),
                         CheckpointHook(cfg.TRAIN.CHECKPOINT_PERIOD),
                         SkippedMediaHook(cfg.DATA.MAX_FAILED_FRACTION, cfg.OUTPUT_DIR)]
    if cfg.MIXUP.ENABLE:
        hooks.append(MixupHook(build_mixup(cfg)))
    ema = EmaHook(cfg.MODEL_EMA.DECAY) if cfg.MODEL_EMA.ENABLE else None
    if ema is not None:
        hooks.append(ema)
    if cfg.TRAIN.CHECKPOINT_ITER_PERIOD:
        hooks.append(IterCheckpointHook(cfg.TRAIN.CHECKPOINT_ITER_PERIOD))
    hooks.append(PreemptionHook())
    hooks.extend(validation_hooks(cfg, trainer, ema))
    return hooks


def validation_hooks(cfg: CfgNode, trainer: Trainer, ema: Optional[EmaHook]) -> List[Hook]:
    """Validation every TRAIN.EVAL_PERIOD epochs (and of the EMA weights, if any); none without a val split."""
    period, info = cfg.TRAIN.EVAL_PERIOD, trainer.info
    if not period:
        return []
    if not has_split(cfg, "val"):
        logger.warning(f"TRAIN.EVAL_PERIOD = {period} but {cfg.DATA.PATH_TO_DATA_DIR} has no val split (val.csv "
                       f"or val/): this run is not validated")
        return []
    loader = build_loader(cfg, "val", info.rank, info.world_size)
    hooks: List[Hook] = [EvalHook(period, lambda: validate(trainer, loader, cfg))]
    if ema is not None:
        hooks.append(EvalHook(period, lambda: evaluate(ema.module, loader, cfg, info, split="val_ema"), "val (EMA)"))
    return hooks


def validate(trainer: Trainer, loader, cfg: CfgNode) -> dict:
    """``evaluate`` of the trainer's model as it is now. A sharded (FSDP) model holds its full weights meanwhile, so
    ranks with different numbers of batches never wait for each other inside a forward pass."""
    with unsharded(trainer.model) as model:
        return evaluate(model, loader, cfg, trainer.info, split="val")


def restore(trainer: Trainer, cfg: CfgNode) -> None:
    """Auto-resume from the newest checkpoint, else initialise weights from TRAIN.CHECKPOINT_FILE_PATH."""
    weights_only = cfg.TRAIN.CHECKPOINT_WEIGHTS_ONLY
    newest = ckpt.load_newest(cfg.OUTPUT_DIR, weights_only) if cfg.TRAIN.AUTO_RESUME else None
    if newest:
        path, state = newest
        trainer.resume(path, weights_only, state=state)
    elif cfg.TRAIN.CHECKPOINT_FILE_PATH:
        path = cfg.TRAIN.CHECKPOINT_FILE_PATH
        # Not strict: a pretraining checkpoint's decoder is dropped, its positions resized (models/pretrained.py).
        logger.info(load_pretrained(trainer.model, pretrained_state(cfg, path), path).summary())


def pretrained_state(cfg: CfgNode, path: str) -> dict:
    """TRAIN.CHECKPOINT_FILE_PATH's state for ``load_pretrained``. An l-DAE checkpoint is first folded at the fixed
    step LDAE.PROBE_T into a plain ViT encoder (``LDAE.export_encoder``), built from the checkpoint's own config."""
    saved = ckpt.load_state(path, cfg.TRAIN.CHECKPOINT_WEIGHTS_ONLY)
    state = saved.get("model", {})
    if not any(key.startswith("dit.") for key in state):
        return saved
    try:
        source = get_defaults()
        source.merge_from_other_cfg(CfgNode.load_cfg(saved.get("cfg") or "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise ckpt.CheckpointError(f"checkpoint {path} holds l-DAE weights but not a readable config of its own "
                                   f"({e}); it is needed to fold the encoder") from None
    ldae = build_model(source)
    ckpt.load_model_state(ldae, state, path)
    t = cfg.LDAE.PROBE_T
    if not ldae.tokenizer.LINEAR and ldae.input_space == "latent" and not cfg.VIT.STEM_FILE:
        raise ckpt.CheckpointError(f"checkpoint {path} is an l-DAE on conv VAE latents: its encoder reads the "
                                   f"latent map, so set VIT.STEM_FILE {source.LDAE.TOKENIZER_FILE} (its tokenizer)")
    logger.info(f"{path}: l-DAE encoder (the first {ldae.dit.encoder_depth} of {len(ldae.dit.blocks)} DiT blocks) "
                f"folded at t = {t} into a plain ViT that reads the clean image")
    return {"model": {f"encoder.{key}": value for key, value in ldae.export_encoder(t).items()}}


def build_trainer(cfg: CfgNode, info: DistInfo) -> Trainer:
    """Model, loaders, optimizer and hooks for ``cfg``, restored from the newest checkpoint if any."""
    # Before any work: a run that cannot save must not start.
    on_main_rank(lambda: ckpt.prepare_checkpoint_dir(cfg.OUTPUT_DIR), (ckpt.CheckpointError,))
    seed_everything(cfg.RNG_SEED, 0, 0)  # identical initial weights on every rank
    model = build_model(cfg).to(info.device)
    loader = build_loader(cfg, "train", info.rank, info.world_size)
    trainer = Trainer(model, loader, build_optimizer(model, cfg), max_epoch=cfg.SOLVER.MAX_EPOCH, info=info,
                      output_dir=cfg.OUTPUT_DIR, config_text=cfg.dump(), precision=precision_from_cfg(cfg),
                      clip_grad=cfg.SOLVER.CLIP_GRAD, skip_nonfinite_loss=cfg.TRAIN.SKIP_NONFINITE_LOSS,
                      max_consecutive_skips=cfg.TRAIN.SKIP_NONFINITE_LIMIT, seed=cfg.RNG_SEED, stats=StatsWriter(cfg.OUTPUT_DIR, info.is_main, cfg.TENSORBOARD.ENABLE),
                      normalize=ClipNormalizer.from_cfg(cfg), accum_steps=cfg.TRAIN.ACCUM_STEPS,
                      parallel=cfg.TRAIN.PARALLEL)
    trainer.register_hooks(build_hooks(cfg, trainer))
    restore(trainer, cfg)
    trainer.wrap_distributed()
    if cfg.MODEL.COMPILE:  # after DDP wrapping, as torch recommends (engine/compile.py)
        trainer.model = compile_model(trainer.model, info.device, cfg.MODEL.COMPILE_MODE)
    return trainer


def train(cfg: CfgNode, info: DistInfo) -> Trainer:
    trainer = build_trainer(cfg, info)
    trainer.train()
    return trainer
