"""Value checks run on every merged config, before any work: one line naming the key, its source, what is allowed.

Checks are data (a table of ranges and choices) plus a few cross-key rules; a method that adds keys adds rows.
Allowed values come from the modules that own them (one source each: a new backend, mask, schedule, decoder,
optimizer, dataset or model is allowed as soon as it is registered there), and rules that concern one model
live with that model's registry entry (``models/build.py``) and run only when it is the chosen model.
"""
from typing import Callable, Collection, Dict, Sequence, Tuple, Union

from fvcore.common.config import CfgNode

from videodiff.data.build import DATASETS
from videodiff.data.decoding import BACKENDS
from videodiff.data.randaug import parse_rand_aug  # the one grammar of AUG.RAND_AUG
from videodiff.engine.compile import COMPILE_MODES
from videodiff.engine.fsdp import PARALLEL_MODES, fsdp_unsupported
from videodiff.engine.optim import FUSED_SETTINGS, LR_POLICIES, OPTIMIZERS
from videodiff.engine.precision import AMP_DTYPES
from videodiff.models.build import MODELS, TOKENIZERS
from videodiff.models.clip_target import CLIP_ACTS
from videodiff.models.decoder import DECODERS
from videodiff.models.diffusion import SCHEDULES
from videodiff.models.ldae import SPACES
from videodiff.models.noise_levels import LOSS_WEIGHTS, PREDICTIONS
from videodiff.models.noise_levels import SCHEDULES as LDAE_SCHEDULES
from videodiff.models.masking import MASK_KINDS
from videodiff.models.per_frame import TOKENIZER_SCOPES
from videodiff.models.vit import POS_EMBED_TYPES


class ConfigError(ValueError):
    """A config key has an unknown name, a wrong type, or an impossible value."""


# key -> (predicate, what is allowed: text, or a function giving it)
_RANGES: Dict[str, Tuple[Callable, Union[str, Callable[[], str]]]] = {}


def _rule(keys: Sequence[str], check: Callable, allowed: Union[str, Callable[[], str]]) -> None:
    for key in keys:
        _RANGES[key] = (check, allowed)


def _choice(keys: Sequence[str], choices: Collection[str]) -> None:
    """One of ``choices``, read when a config is checked: a registry (a dict) that grows later is honoured."""
    _rule(keys, lambda v: v in choices, lambda: "one of " + ", ".join(choices))


_rule(["TRAIN.BATCH_SIZE", "TEST.BATCH_SIZE", "DATA.NUM_FRAMES", "DATA.SAMPLING_RATE", "DATA.TRAIN_CROP_SIZE",
       "DATA.TEST_CROP_SIZE", "AUG.NUM_SAMPLE", "SOLVER.MAX_EPOCH", "TEST.NUM_ENSEMBLE_VIEWS",
       "TEST.NUM_SPATIAL_CROPS", "LOG_PERIOD", "TRAIN.CHECKPOINT_PERIOD", "VIT.PATCH_SIZE",
       "VIT.TEMPORAL_PATCH_SIZE", "VIT.EMBED_DIM", "VIT.DEPTH", "VIT.NUM_HEADS", "VIT.IN_CHANNELS",
       "MODEL.NUM_CLASSES", "TRAIN.ACCUM_STEPS"], lambda v: v >= 1, "an integer >= 1")
_rule(["DATA_LOADER.NUM_WORKERS", "TRAIN.EVAL_PERIOD", "RNG_SEED", "TRAIN.CHECKPOINT_ITER_PERIOD",
       "TRAIN.SKIP_NONFINITE_LIMIT"], lambda v: v >= 0, "an integer >= 0")
_rule(["SOLVER.BASE_LR", "VIT.MLP_RATIO", "SOLVER.LARS_TRUST_COEFF"], lambda v: v > 0, "a number > 0")
_rule(["SOLVER.WEIGHT_DECAY", "SOLVER.WARMUP_EPOCHS", "SOLVER.CLIP_GRAD", "SOLVER.COSINE_END_LR",
       "SOLVER.MOMENTUM"], lambda v: v >= 0, "a number >= 0")
_rule(["VIT.DROP_PATH_RATE", "MODEL.DROPOUT_RATE", "MODEL.LABEL_SMOOTHING"], lambda v: 0 <= v < 1, "a number in [0, 1)")
_rule(["SOLVER.LAYER_DECAY"], lambda v: 0 < v <= 1, "a number in (0, 1]")
_choice(["SOLVER.OPTIMIZING_METHOD"], OPTIMIZERS)
_choice(["SOLVER.LR_POLICY"], LR_POLICIES)
_choice(["SOLVER.FUSED"], FUSED_SETTINGS)
_choice(["MODEL.COMPILE_MODE"], COMPILE_MODES)
_choice(["DATA.DECODING_BACKEND"], BACKENDS)
_choice(["TRAIN.DATASET", "TEST.DATASET"], DATASETS)
_rule(["DATA.TARGET_FPS"], lambda v: v >= 0, "a number >= 0 (0 = the video's own frames)")
_rule(["DATA.MAX_RETRIES", "DATA.LABELS_SEED"], lambda v: v >= 0, "an integer >= 0")
_rule(["DATA.LABELS_PER_CLASS"], lambda v: v >= 0, "an integer >= 0 (0 = every label of the train list)")
_rule(["DATA_LOADER.PREFETCH_FACTOR"], lambda v: v >= 1, "an integer >= 1 (batches each worker prepares ahead)")
_rule(["DATA.MAX_FAILED_FRACTION"], lambda v: 0 <= v <= 1, "a number in [0, 1]")
_rule(["AUG.RAND_AUG"], lambda v: _is_rand_aug(v),
      "'' (off) or a RandAugment setting such as rand-m9-n2-mstd0.5 (tokens m<0-10>, n<ops>, mstd<std>, p<prob>)")
_choice(["TRAIN.AMP_DTYPE"], AMP_DTYPES)
_choice(["TRAIN.PARALLEL"], PARALLEL_MODES)
_rule(["SOLVER.BETAS"], lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)")
_rule(["DATA.TRAIN_JITTER_SCALES_RELATIVE"], lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
      "[min, max] with 0 < min <= max <= 1")
_rule(["DATA.TRAIN_JITTER_ASPECT_RELATIVE"], lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[min, max] with 0 < min <= max")
_rule(["DATA.STD"], lambda v: all(s > 0 for s in v), "positive numbers")
_rule(["MASK.RATIO"], lambda v: 0 < v < 1, "a number in (0, 1)")
_choice(["MASK.TYPE"], MASK_KINDS)
_rule(["DIFFUSION.STEPS", "DIFFMAE.DECODER_DEPTH", "DIFFMAE.DECODER_EMBED_DIM", "DIFFMAE.DECODER_NUM_HEADS"],
      lambda v: v >= 1, "an integer >= 1")
_rule(["DIFFUSION.RHO"], lambda v: v > 0, "a number > 0")
_rule(["DIFFUSION.BETA_START", "DIFFUSION.BETA_END"], lambda v: 0 < v < 1, "a number in (0, 1)")
_choice(["DIFFUSION.SCHEDULE"], SCHEDULES)
_choice(["DIFFMAE.DECODER_TYPE"], DECODERS)
_rule(["DIFFMAE.TARGET_SLICE"], lambda v: v >= 0, "an integer >= 0")
_rule(["DIFFMAE.CLIP_LOSS_WEIGHT"], lambda v: v >= 0, "a number >= 0")
_choice(["DIFFMAE.CLIP_ACT"], CLIP_ACTS)
_choice(["VIT.POS_EMBED"], POS_EMBED_TYPES)
_rule(["VIT.NORM_EPS"], lambda v: v > 0, "a number > 0")
_rule(["MIXUP.ALPHA", "MIXUP.CUTMIX_ALPHA"], lambda v: v >= 0, "a number >= 0")
_rule(["MIXUP.PROB", "MIXUP.SWITCH_PROB"], lambda v: 0 <= v <= 1, "a number in [0, 1]")
_rule(["MIXUP.LABEL_SMOOTH_VALUE"], lambda v: 0 <= v < 1, "a number in [0, 1)")
_rule(["MODEL_EMA.DECAY"], lambda v: 0 < v < 1, "a number in (0, 1)")
_choice(["LDAE.TOKENIZER"], TOKENIZERS)
_choice(["LDAE.TOKENIZER_SCOPE"], TOKENIZER_SCOPES)
_choice(["LDAE.SCHEDULE"], LDAE_SCHEDULES)
_choice(["LDAE.PREDICT"], PREDICTIONS)
_choice(["LDAE.INPUT_SPACE", "LDAE.OUTPUT_SPACE"], SPACES)
_choice(["LDAE.LOSS_WEIGHT"], LOSS_WEIGHTS)
_rule(["LDAE.STEPS"], lambda v: v >= 2, "an integer >= 2")
_rule(["LDAE.LATENT_DIM"], lambda v: v >= 1, "an integer >= 1")
_rule(["LDAE.ENCODER_DEPTH", "LDAE.COND_DIM", "LDAE.PROBE_T"], lambda v: v >= 0, "an integer >= 0")
_rule(["LDAE.SIGMA_MAX", "LDAE.SINGLE_SIGMA"], lambda v: v > 0, "a number > 0")
_rule(["LDAE.RESIDUAL_WEIGHT"], lambda v: v >= 0, "a number >= 0")
_rule(["LDAE.CLASS_DROPOUT"], lambda v: 0 <= v < 1, "a number in [0, 1)")
_rule(["CONV_VAE.LATENT_CHANNELS", "CONV_VAE.WIDTH", "CONV_VAE.NUM_RES_BLOCKS"], lambda v: v >= 1,
      "an integer >= 1")
_rule(["CONV_VAE.STRIDE"], lambda v: v >= 2 and not v & (v - 1), "a power of 2 >= 2")
_rule(["CONV_VAE.KL_WEIGHT", "CONV_VAE.PERCEPTUAL_WEIGHT", "CONV_VAE.ADVERSARIAL_WEIGHT",
       "CONV_VAE.ADVERSARIAL_START"], lambda v: v >= 0, "a number >= 0")


def _is_rand_aug(value: str) -> bool:
    parse_rand_aug(value)
    return True


def _get(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _cross_key_rules(cfg: CfgNode):
    """Rules that relate two keys: yield (key, message) for each broken one."""
    p, tp = cfg.VIT.PATCH_SIZE, cfg.VIT.TEMPORAL_PATCH_SIZE
    for key in ("DATA.TRAIN_CROP_SIZE", "DATA.TEST_CROP_SIZE"):
        size = _get(cfg, key)
        if size % p:
            valid = ", ".join(str(p * k) for k in range(max(1, size // p - 2), size // p + 3))
            yield key, f"= {size} is not divisible by VIT.PATCH_SIZE = {p}; nearby valid sizes: {valid}"
    if cfg.DATA.NUM_FRAMES % tp:
        yield "DATA.NUM_FRAMES", f"= {cfg.DATA.NUM_FRAMES} is not divisible by VIT.TEMPORAL_PATCH_SIZE = {tp}"
    if cfg.VIT.EMBED_DIM % cfg.VIT.NUM_HEADS:
        yield "VIT.EMBED_DIM", f"= {cfg.VIT.EMBED_DIM} is not divisible by VIT.NUM_HEADS = {cfg.VIT.NUM_HEADS}"
    for key in ("DATA.MEAN", "DATA.STD"):
        if len(_get(cfg, key)) != cfg.VIT.IN_CHANNELS:
            yield key, f"has {len(_get(cfg, key))} values but VIT.IN_CHANNELS = {cfg.VIT.IN_CHANNELS}"
    if cfg.SOLVER.WARMUP_EPOCHS > cfg.SOLVER.MAX_EPOCH:
        yield "SOLVER.WARMUP_EPOCHS", f"= {cfg.SOLVER.WARMUP_EPOCHS} exceeds SOLVER.MAX_EPOCH = {cfg.SOLVER.MAX_EPOCH}"
    yield from _downstream_rules(cfg)
    yield from _parallel_rules(cfg)
    name = cfg.MODEL.MODEL_NAME
    if name not in MODELS:
        yield "MODEL.MODEL_NAME", f"= {name!r} is not a registered model; choose one of {', '.join(sorted(MODELS))}"
    else:
        yield from MODELS[name].check_cfg(cfg)


def _parallel_rules(cfg: CfgNode):
    """FSDP needs a torch that has it, and keeps no EMA (its averaged copy would be a full replica again)."""
    if cfg.TRAIN.PARALLEL != "fsdp":
        return
    reason = fsdp_unsupported()
    if reason:
        yield "TRAIN.PARALLEL", f"= 'fsdp' cannot run: {reason}; use TRAIN.PARALLEL ddp"
    if cfg.MODEL_EMA.ENABLE:
        yield "TRAIN.PARALLEL", ("= 'fsdp' does not support MODEL_EMA.ENABLE True (the average is not sharded); "
                                 "set MODEL_EMA.ENABLE False or TRAIN.PARALLEL ddp")


def _downstream_rules(cfg: CfgNode):
    """Fine-tuning / probing keys: mixup must mix something; learned positions fix one clip size."""
    if cfg.MIXUP.ENABLE and cfg.MIXUP.ALPHA == 0 and cfg.MIXUP.CUTMIX_ALPHA == 0:
        yield "MIXUP.ENABLE", "is True but MIXUP.ALPHA and MIXUP.CUTMIX_ALPHA are both 0"
    if cfg.VIT.POS_EMBED == "learned" and cfg.DATA.TEST_CROP_SIZE != cfg.DATA.TRAIN_CROP_SIZE:
        yield "DATA.TEST_CROP_SIZE", (f"= {cfg.DATA.TEST_CROP_SIZE} differs from DATA.TRAIN_CROP_SIZE = "
                                      f"{cfg.DATA.TRAIN_CROP_SIZE}; learned position embeddings (VIT.POS_EMBED "
                                      f"learned) cover one token grid")


def validate_config(cfg: CfgNode, sources: Dict[str, str]) -> None:
    """Raise ConfigError for the first impossible value, naming the key and where it was set."""

    def where(key):
        return sources.get(key, "defaults")

    for key, (check, allowed) in _RANGES.items():
        value = _get(cfg, key)
        try:
            ok = bool(check(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            allowed = allowed() if callable(allowed) else allowed
            raise ConfigError(f"{key} (from {where(key)}) = {value!r} is not allowed: expected {allowed}")
    for key, message in _cross_key_rules(cfg):
        raise ConfigError(f"{key} (from {where(key)}) {message}")
