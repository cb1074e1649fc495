"""Value checks run on every merged config, before any work: one line naming the key, its source, what is allowed.

Checks are data (a table of ranges and choices) plus a few cross-key rules; a method that adds keys adds rows.
"""
from typing import Callable, Dict, Sequence, Tuple

from fvcore.common.config import CfgNode


class ConfigError(ValueError):
    """A config key has an unknown name, a wrong type, or an impossible value."""


# key -> (predicate, what is allowed)
_RANGES: Dict[str, Tuple[Callable, str]] = {}


def _rule(keys: Sequence[str], check: Callable, allowed: str) -> None:
    for key in keys:
        _RANGES[key] = (check, allowed)


_rule(["TRAIN.BATCH_SIZE", "TEST.BATCH_SIZE", "DATA.NUM_FRAMES", "DATA.SAMPLING_RATE", "DATA.TRAIN_CROP_SIZE",
       "DATA.TEST_CROP_SIZE", "AUG.NUM_SAMPLE", "SOLVER.MAX_EPOCH", "TEST.NUM_ENSEMBLE_VIEWS",
       "TEST.NUM_SPATIAL_CROPS", "LOG_PERIOD", "TRAIN.CHECKPOINT_PERIOD", "VIT.PATCH_SIZE",
       "VIT.TEMPORAL_PATCH_SIZE", "VIT.EMBED_DIM", "VIT.DEPTH", "VIT.NUM_HEADS", "VIT.IN_CHANNELS",
       "MODEL.NUM_CLASSES"], lambda v: v >= 1, "an integer >= 1")
_rule(["DATA_LOADER.NUM_WORKERS", "TRAIN.EVAL_PERIOD", "RNG_SEED", "TRAIN.CHECKPOINT_ITER_PERIOD"], lambda v: v >= 0, "an integer >= 0")
_rule(["SOLVER.BASE_LR", "VIT.MLP_RATIO"], lambda v: v > 0, "a number > 0")
_rule(["SOLVER.WEIGHT_DECAY", "SOLVER.WARMUP_EPOCHS", "SOLVER.CLIP_GRAD", "SOLVER.COSINE_END_LR",
       "SOLVER.MOMENTUM"], lambda v: v >= 0, "a number >= 0")
_rule(["VIT.DROP_PATH_RATE", "MODEL.DROPOUT_RATE", "MODEL.LABEL_SMOOTHING"], lambda v: 0 <= v < 1, "a number in [0, 1)")
_rule(["SOLVER.LAYER_DECAY"], lambda v: 0 < v <= 1, "a number in (0, 1]")
_rule(["SOLVER.OPTIMIZING_METHOD"], lambda v: v in ("adamw", "sgd"), "one of adamw, sgd")
_rule(["SOLVER.LR_POLICY"], lambda v: v in ("cosine", "constant"), "one of cosine, constant")
_rule(["DATA.DECODING_BACKEND"], lambda v: v in ("pyav", "decord", "torchcodec"), "one of pyav, decord, torchcodec")
_rule(["DATA.TARGET_FPS"], lambda v: v >= 0, "a number >= 0 (0 = the video's own frames)")
_rule(["DATA.MAX_RETRIES"], lambda v: v >= 0, "an integer >= 0")
_rule(["DATA.MAX_FAILED_FRACTION"], lambda v: 0 <= v <= 1, "a number in [0, 1]")
_rule(["AUG.RAND_AUG"], lambda v: _is_rand_aug(v),
      "'' (off) or a RandAugment setting such as rand-m9-n2-mstd0.5 (tokens m<0-10>, n<ops>, mstd<std>, p<prob>)")
_rule(["TRAIN.AMP_DTYPE"], lambda v: v in ("bfloat16", "float16"), "one of bfloat16, float16")
_rule(["SOLVER.BETAS"], lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)")
_rule(["DATA.TRAIN_JITTER_SCALES_RELATIVE"], lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
      "[min, max] with 0 < min <= max <= 1")
_rule(["DATA.TRAIN_JITTER_ASPECT_RELATIVE"], lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[min, max] with 0 < min <= max")
_rule(["DATA.STD"], lambda v: all(s > 0 for s in v), "positive numbers")
_rule(["MASK.RATIO"], lambda v: 0 < v < 1, "a number in (0, 1)")
_rule(["MASK.TYPE"], lambda v: v in ("random", "tube", "center"), "one of random, tube, center")
_rule(["DIFFUSION.STEPS", "DIFFMAE.DECODER_DEPTH", "DIFFMAE.DECODER_EMBED_DIM", "DIFFMAE.DECODER_NUM_HEADS"],
      lambda v: v >= 1, "an integer >= 1")
_rule(["DIFFUSION.RHO"], lambda v: v > 0, "a number > 0")
_rule(["DIFFUSION.BETA_START", "DIFFUSION.BETA_END"], lambda v: 0 < v < 1, "a number in (0, 1)")
_rule(["DIFFUSION.SCHEDULE"], lambda v: v in ("linear", "cosine"), "one of linear, cosine")
_rule(["DIFFMAE.DECODER_TYPE"], lambda v: v in ("joint", "cross", "cross_self"), "one of joint, cross, cross_self")
_rule(["DIFFMAE.TARGET_SLICE"], lambda v: v >= 0, "an integer >= 0")
_rule(["DIFFMAE.CLIP_LOSS_WEIGHT"], lambda v: v >= 0, "a number >= 0")
_rule(["DIFFMAE.CLIP_ACT"], lambda v: v in ("gelu", "quick_gelu"), "one of gelu, quick_gelu")
_rule(["VIT.POS_EMBED"], lambda v: v in ("sincos", "learned"), "one of sincos, learned")
_rule(["VIT.NORM_EPS"], lambda v: v > 0, "a number > 0")
_rule(["MIXUP.ALPHA", "MIXUP.CUTMIX_ALPHA"], lambda v: v >= 0, "a number >= 0")
_rule(["MIXUP.PROB", "MIXUP.SWITCH_PROB"], lambda v: 0 <= v <= 1, "a number in [0, 1]")
_rule(["MIXUP.LABEL_SMOOTH_VALUE"], lambda v: 0 <= v < 1, "a number in [0, 1)")
_rule(["MODEL_EMA.DECAY"], lambda v: 0 < v < 1, "a number in (0, 1)")


def _is_rand_aug(value: str) -> bool:
    from videodiff.data.randaug import parse_rand_aug  # the one grammar of AUG.RAND_AUG

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
    if cfg.DIFFUSION.BETA_START > cfg.DIFFUSION.BETA_END:
        yield "DIFFUSION.BETA_START", f"= {cfg.DIFFUSION.BETA_START} exceeds DIFFUSION.BETA_END = {cfg.DIFFUSION.BETA_END}"
    if cfg.DIFFMAE.TARGET_SLICE >= tp:
        yield "DIFFMAE.TARGET_SLICE", (f"= {cfg.DIFFMAE.TARGET_SLICE} is not a frame of a token: expected 0 .. "
                                       f"VIT.TEMPORAL_PATCH_SIZE - 1 = {tp - 1}")
    dec, heads = cfg.DIFFMAE.DECODER_EMBED_DIM, cfg.DIFFMAE.DECODER_NUM_HEADS
    if dec % heads:
        yield "DIFFMAE.DECODER_EMBED_DIM", f"= {dec} is not divisible by DIFFMAE.DECODER_NUM_HEADS = {heads}"
    if dec % 8:
        yield "DIFFMAE.DECODER_EMBED_DIM", f"= {dec} is not divisible by 8 (3-D sin-cos position embedding)"
    yield from _downstream_rules(cfg)


def _downstream_rules(cfg: CfgNode):
    """Fine-tuning / probing keys: mixup must mix something; learned positions fix one clip size."""
    if cfg.MIXUP.ENABLE and cfg.MIXUP.ALPHA == 0 and cfg.MIXUP.CUTMIX_ALPHA == 0:
        yield "MIXUP.ENABLE", "is True but MIXUP.ALPHA and MIXUP.CUTMIX_ALPHA are both 0"
    if cfg.VIT.POS_EMBED == "learned" and cfg.DATA.TEST_CROP_SIZE != cfg.DATA.TRAIN_CROP_SIZE:
        yield "DATA.TEST_CROP_SIZE", (f"= {cfg.DATA.TEST_CROP_SIZE} differs from DATA.TRAIN_CROP_SIZE = "
                                      f"{cfg.DATA.TRAIN_CROP_SIZE}; learned position embeddings (VIT.POS_EMBED "
                                      f"learned) cover one token grid")
    if cfg.MODEL.MODEL_NAME in ("DiffMAE", "MAE") and (cfg.VIT.POS_EMBED != "sincos" or cfg.VIT.CLS_TOKEN):
        yield "VIT.POS_EMBED", (f"/ VIT.CLS_TOKEN are for downstream models; {cfg.MODEL.MODEL_NAME} pretrains "
                                f"with sin-cos positions and no class token")


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
            raise ConfigError(f"{key} (from {where(key)}) = {value!r} is not allowed: expected {allowed}")
    for key, message in _cross_key_rules(cfg):
        raise ConfigError(f"{key} (from {where(key)}) {message}")
