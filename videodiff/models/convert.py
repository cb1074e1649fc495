"""Import public ViT checkpoints into videodiff's keys: pure functions from one state dict to another.

Formats (their key layouts, as published):

* ``mae`` -- image MAE (facebookresearch/mae), timm names: ``cls_token``, ``pos_embed`` [1, 1+N, D] (class slot
  first), ``patch_embed.proj`` (Conv2d), ``blocks.i.attn.qkv``, ``norm`` (pretraining) or ``fc_norm`` +
  ``head`` (fine-tuned with global pooling).
* ``mae_st`` -- MAE-ST (facebookresearch/mae_st): separate ``attn.q`` / ``attn.k`` / ``attn.v``, separable
  ``pos_embed_spatial`` [1, H'W', D] + ``pos_embed_temporal`` [1, T', D] + ``pos_embed_class``, or one joint
  ``pos_embed``; fine-tuned models normalise *after* pooling with ``norm`` and classify with ``head``.
* ``videomae`` -- VideoMAE (MCG-NJU/VideoMAE): fused ``attn.qkv`` without bias plus ``attn.q_bias`` /
  ``attn.v_bias`` (k has none), pretraining keys under ``encoder.``, and usually no stored positions (a fixed
  1-D sinusoid table over the flattened tokens, regenerated here); fine-tuned: ``fc_norm`` + ``head``.

Every format becomes videodiff's ``encoder.*`` (a VisionTransformer with ``pos_embed_type="learned"``, so the
imported positions are used exactly) and, for fine-tuned checkpoints, ``head.fc_norm`` / ``head.fc``. The report
names every source key's destination or why it was dropped, and the VIT / DATA settings the result needs.
"""
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

State = Dict[str, torch.Tensor]
# Attention widths of the published models; heads cannot be read off the weights.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass
class ConversionReport:
    fmt: str
    mapped: List[str] = field(default_factory=list)      # "source -> destination"
    dropped: List[str] = field(default_factory=list)     # "source (reason)"
    settings: Dict[str, object] = field(default_factory=dict)
    used: set = field(default_factory=set)                # source keys that reached the output

    def map(self, sources, dest: str) -> None:
        sources = [sources] if isinstance(sources, str) else list(sources)
        self.mapped.append(f"{' + '.join(sources)} -> {dest}")
        self.used.update(sources)

    def drop(self, key: str, reason: str) -> None:
        self.dropped.append(f"{key} ({reason})")

    def overrides(self) -> str:
        """The settings as KEY VALUE command-line overrides."""
        return " ".join(f"{k} {v}" for k, v in self.settings.items())


def strip_prefix(state: State, prefix: str) -> State:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def videomae_sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed table [N, D]: channel j holds sin (j even) or cos (j odd) of pos / 10000^(2*(j//2)/D)."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2).double() / dim
    angles = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)[None]
    table = torch.where(torch.arange(dim)[None] % 2 == 0, angles.sin(), angles.cos())
    return table.float()


def grid_table(pos: torch.Tensor, grid: Tuple[int, int, int]) -> torch.Tensor:
    """Flattened positions [1, N, D] in (t, h, w) order -> videodiff's [1, T', H', W', D]."""
    t, h, w = grid
    if pos.shape[1] != t * h * w:
        raise ValueError(f"position table has {pos.shape[1]} entries but the grid {grid} has {t * h * w}; "
                         f"pass the source model's --num-frames / --img-size")
    return pos.reshape(1, t, h, w, pos.shape[-1])


def square_grid(num_tokens: int, frames: int) -> Tuple[int, int, int]:
    """(T', H', W') for ``num_tokens`` tokens over ``frames`` temporal slots on a square spatial grid."""
    side = math.isqrt(num_tokens // frames) if num_tokens % frames == 0 else 0
    if side * side * frames != num_tokens:
        raise ValueError(f"{num_tokens} position entries do not form {frames} square frames; "
                         f"pass the source model's --num-frames / --img-size")
    return frames, side, side


def _block_key(key: str, value: torch.Tensor, state: State, out: State, report: ConversionReport,
               attention: Callable) -> None:
    """One ``blocks.i.*`` source key: attention keys through ``attention``, the rest by the same name."""
    i, rest = _BLOCK.match(key).groups()
    if rest.startswith(("gamma_", "ls1", "ls2")):
        raise ValueError(f"{key}: layer scale is not supported by videodiff's ViT")
    if rest.startswith("attn.") and not rest.startswith("attn.proj."):
        attention(f"blocks.{i}.attn.", rest[len("attn."):], state, out, report)
        return
    out[f"encoder.blocks.{i}.{rest}"] = value
    report.map(key, f"encoder.blocks.{i}.{rest}")


def _attn_fused(prefix: str, rest: str, state: State, out: State, report: ConversionReport) -> None:
    """timm / MAE: ``attn.qkv`` is already ours."""
    out[f"encoder.{prefix}{rest}"] = state[prefix + rest]
    report.map(prefix + rest, f"encoder.{prefix}{rest}")


def _attn_separate(prefix: str, rest: str, state: State, out: State, report: ConversionReport) -> None:
    """MAE-ST: ``attn.q`` / ``attn.k`` / ``attn.v`` -> one ``attn.qkv`` (rows q, then k, then v)."""
    part, kind = rest.split(".")
    if part != "q":
        return  # k and v are consumed together with q
    sources = [f"{prefix}{p}.{kind}" for p in ("q", "k", "v")]
    out[f"encoder.{prefix}qkv.{kind}"] = torch.cat([state[s] for s in sources])
    report.map(sources, f"encoder.{prefix}qkv.{kind}")


def _attn_qv_bias(prefix: str, rest: str, state: State, out: State, report: ConversionReport) -> None:
    """VideoMAE: bias-free ``attn.qkv`` + ``q_bias`` / ``v_bias`` -> ``attn.qkv`` with bias [q_bias, 0, v_bias]."""
    if rest == "qkv.weight":
        out[f"encoder.{prefix}qkv.weight"] = state[prefix + rest]
        report.map(prefix + rest, f"encoder.{prefix}qkv.weight")
    elif rest == "q_bias":
        q, v = state[prefix + "q_bias"], state[prefix + "v_bias"]
        out[f"encoder.{prefix}qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
        report.map([prefix + "q_bias", "zeros (k)", prefix + "v_bias"], f"encoder.{prefix}qkv.bias")


def _patch_embed(state: State, out: State, report: ConversionReport) -> Tuple[int, int]:
    """Conv2d (images) or Conv3d weights -> our Conv3d; returns (t_patch, patch size)."""
    weight = state["patch_embed.proj.weight"]
    if weight.dim() == 4:
        weight = weight[:, :, None]  # an image patch is a 1-frame spacetime patch
    out["encoder.patch_embed.proj.weight"] = weight
    out["encoder.patch_embed.proj.bias"] = state["patch_embed.proj.bias"]
    report.map("patch_embed.proj.weight", "encoder.patch_embed.proj.weight")
    report.map("patch_embed.proj.bias", "encoder.patch_embed.proj.bias")
    return weight.shape[2], weight.shape[-1]


def _rename(key: str, dest: str, state: State, out: State, report: ConversionReport) -> None:
    out[dest] = state[key]
    report.map(key, dest)


def _settings(report: ConversionReport, out: State, t_patch: int, patch: int, grid: Tuple[int, int, int],
              num_heads: Optional[int]) -> None:
    """VIT.* / DATA.* values a videodiff config needs to build a model these weights fit."""
    width = out["encoder.patch_embed.proj.weight"].shape[0]
    depth = 1 + max(int(_BLOCK.match(k[len("encoder."):]).group(1)) for k in out if k.startswith("encoder.blocks."))
    heads = num_heads or HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise ValueError(f"width {width} is not a published model size; pass --num-heads")
    report.settings.update({
        "VIT.PATCH_SIZE": patch, "VIT.TEMPORAL_PATCH_SIZE": t_patch, "VIT.EMBED_DIM": width, "VIT.DEPTH": depth,
        "VIT.NUM_HEADS": heads, "VIT.MLP_RATIO": out["encoder.blocks.0.mlp.fc1.weight"].shape[0] / width,
        "VIT.QKV_BIAS": "encoder.blocks.0.attn.qkv.bias" in out, "VIT.POS_EMBED": "learned",
        "VIT.CLS_TOKEN": "encoder.cls_token" in out, "VIT.NORM_EPS": 1e-6,
        "DATA.NUM_FRAMES": grid[0] * t_patch, "DATA.TRAIN_CROP_SIZE": grid[1] * patch,
        "DATA.TEST_CROP_SIZE": grid[1] * patch})
    if "head.fc.weight" in out:
        report.settings["MODEL.NUM_CLASSES"] = out["head.fc.weight"].shape[0]


# ---------------------------------------------------------------------- positions and class token, per format
def _cls_token(state: State, out: State, report: ConversionReport, pos: torch.Tensor, pos_source: str) -> None:
    """The class token and its learned position (``pos`` [1, 1, D])."""
    _rename("cls_token", "encoder.cls_token", state, out, report)
    out["encoder.cls_pos_embed"] = pos
    report.map(pos_source, "encoder.cls_pos_embed")


def _positions_joint(state: State, out: State, report: ConversionReport, t_patch: int, frames: int,
                     img_size: int) -> Tuple[int, int, int]:
    """One table [1, (1+)N, D] over T' = frames / t_patch square frames, the class slot first if any."""
    pos, cls = state["pos_embed"], int("cls_token" in state)
    grid = square_grid(pos.shape[1] - cls, max(frames // t_patch, 1))
    out["encoder.learned_pos_embed"] = grid_table(pos[:, cls:], grid)
    report.map("pos_embed", "encoder.learned_pos_embed")
    if cls:
        _cls_token(state, out, report, pos[:, :1], "pos_embed (class slot)")
    return grid


def _positions_mae(state: State, out: State, report: ConversionReport, t_patch: int, frames: int,
                   img_size: int) -> Tuple[int, int, int]:
    """Images: one frame. (MAE stores its fixed 2-D sin-cos as this table; fine-tuning learns it.)"""
    return _positions_joint(state, out, report, t_patch, t_patch, img_size)


def _positions_mae_st(state: State, out: State, report: ConversionReport, t_patch: int, frames: int,
                      img_size: int) -> Tuple[int, int, int]:
    """Separable spatial + temporal tables (summed into one: exactly what MAE-ST adds), or one joint table."""
    if "pos_embed_spatial" not in state:
        return _positions_joint(state, out, report, t_patch, frames, img_size)
    spatial, temporal = state["pos_embed_spatial"], state["pos_embed_temporal"]
    grid = square_grid(spatial.shape[1] * temporal.shape[1], temporal.shape[1])
    out["encoder.learned_pos_embed"] = temporal[:, :, None, None, :] + spatial.reshape(1, 1, *grid[1:], -1)
    report.map(["pos_embed_temporal", "pos_embed_spatial"], "encoder.learned_pos_embed")
    if "cls_token" in state:
        _cls_token(state, out, report, state["pos_embed_class"], "pos_embed_class")
    return grid


def _positions_videomae(state: State, out: State, report: ConversionReport, t_patch: int, frames: int,
                        img_size: int) -> Tuple[int, int, int]:
    """A learned table if stored, else VideoMAE's fixed 1-D sinusoid table over the flattened tokens."""
    if "pos_embed" in state:
        return _positions_joint(state, out, report, t_patch, frames, img_size)
    patch = state["patch_embed.proj.weight"].shape[-1]
    if img_size % patch or frames % t_patch:
        raise ValueError(f"--img-size {img_size} / --num-frames {frames} do not divide into {patch}-px, "
                         f"{t_patch}-frame patches")
    grid = (frames // t_patch, img_size // patch, img_size // patch)
    table = videomae_sinusoid_table(grid[0] * grid[1] * grid[2], state["patch_embed.proj.weight"].shape[0])
    out["encoder.learned_pos_embed"] = grid_table(table[None], grid)
    report.mapped.append(f"(VideoMAE's fixed sinusoid table for {grid}, regenerated) -> encoder.learned_pos_embed")
    return grid


# ---------------------------------------------------------------------- norms and heads, per format
def _heads_mae(state: State) -> Dict[str, str]:
    """Global-pool fine-tuning: fc_norm + head. Otherwise ``norm`` is the encoder's final norm."""
    if "fc_norm.weight" in state:
        return {"fc_norm.weight": "head.fc_norm.weight", "fc_norm.bias": "head.fc_norm.bias",
                "head.weight": "head.fc.weight", "head.bias": "head.fc.bias"}
    return {"norm.weight": "encoder.norm.weight", "norm.bias": "encoder.norm.bias"}


def _heads_mae_st(state: State) -> Dict[str, str]:
    """Fine-tuned MAE-ST pools, then ``norm``s, then ``head``s: that is our head. Pretrained: encoder norm."""
    if "head.weight" in state:
        return {"norm.weight": "head.fc_norm.weight", "norm.bias": "head.fc_norm.bias",
                "head.weight": "head.fc.weight", "head.bias": "head.fc.bias"}
    return {"norm.weight": "encoder.norm.weight", "norm.bias": "encoder.norm.bias"}


FORMATS = {"mae": (_attn_fused, _positions_mae, _heads_mae),
           "mae_st": (_attn_separate, _positions_mae_st, _heads_mae_st),
           "videomae": (_attn_qv_bias, _positions_videomae, _heads_mae)}


def _drop_reason(key: str) -> str:
    if key.startswith(("decoder", "mask_token", "encoder_to_decoder")):
        return "pretraining decoder"
    if key.startswith("head."):
        return "classifies the class token; videodiff pools patch tokens, so a new head is needed"
    return "no counterpart in videodiff's ViT"


# Source keys the conversion reads (everything else is reported as dropped).
_VIT_KEYS = ("patch_embed.", "blocks.", "pos_embed", "cls_token", "norm.", "fc_norm.", "head.")


def _check_layout(state: State, fmt: str) -> None:
    """A ValueError saying what is missing when ``state`` is not a ViT state dict at all."""
    for key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
        if key not in state:
            raise _missing(state, fmt, key)
    if not any(_BLOCK.match(k) for k in state):
        raise _missing(state, fmt, "blocks.0.*")
    for key, value in state.items():
        if key.startswith(_VIT_KEYS) and not torch.is_tensor(value):
            raise ValueError(f"{key!r} holds a {type(value).__name__}, not a tensor")


def _missing(state: State, fmt: str, key: str) -> ValueError:
    shown = ", ".join(sorted(state)[:6]) + (", ..." if len(state) > 6 else "")
    return ValueError(f"no {key!r}: not a ViT state dict in the {fmt} layout (it has {len(state)} key(s): "
                      f"{shown or 'none'})")


def convert_state_dict(state: State, fmt: str, num_frames: int = 16, img_size: int = 224,
                       num_heads: Optional[int] = None) -> Tuple[State, ConversionReport]:
    """A public checkpoint's state dict -> (videodiff state dict, report). ``num_frames`` / ``img_size``
    describe the source model's clip; they are needed only where its positions do not reveal the grid.

    A state dict that is not a ViT in ``fmt``'s layout raises ValueError naming the first key it lacks."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise ValueError(f"not a state dict: key {bad[0]!r} is not a string")
    state = strip_prefix(strip_prefix(state, "module."), "encoder.")  # DDP wrappers; VideoMAE pretraining
    _check_layout(state, fmt)
    try:
        return _convert(state, fmt, num_frames, img_size, num_heads)
    except KeyError as e:  # a key that the layout pairs with one present (q without k, cls_token without ...)
        raise _missing(state, fmt, e.args[0]) from None


def _convert(state: State, fmt: str, num_frames: int, img_size: int,
             num_heads: Optional[int]) -> Tuple[State, ConversionReport]:
    attention, positions, heads = FORMATS[fmt]
    out, report = {}, ConversionReport(fmt)
    t_patch, patch = _patch_embed(state, out, report)
    grid = positions(state, out, report, t_patch, num_frames, img_size)
    for key, value in state.items():
        if _BLOCK.match(key):
            _block_key(key, value, state, out, report, attention)
    for key, dest in heads(state).items():
        if key in state:
            _rename(key, dest, state, out, report)
    for key in state:
        if key not in report.used:
            report.drop(key, _drop_reason(key))
    _settings(report, out, t_patch, patch, grid, num_heads)
    return out, report
