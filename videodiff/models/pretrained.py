"""Initialise a downstream model (fine-tuning, linear probe) from a pretraining or classifier checkpoint.

``adapt_state_dict`` is a pure function from the checkpoint's state dict to one that fits the target model
(timm's ``checkpoint_filter_fn`` idea), plus a report of what happened to every key:

* ``encoder.*`` must match the target's encoder key for key: a missing or extra encoder weight means another
  architecture or a wrong VIT.* setting, and is an error naming the file, the keys and the likely setting.
* Learned position embeddings of another token grid are resized (bicubic in space, linear in time); any
  other shape mismatch is an error.
* The encoder's final LayerNorm is dropped when the target has none (fine-tuning pools, then ``head.fc_norm``).
* Pretraining-only weights (DiffMAE / MAE decoders, projections, mask tokens) are dropped.
* ``head.*`` loads when it fits; with ``drop_head`` it is dropped (a new label set). Target keys the checkpoint
  does not provide (a fresh head) keep their initialisation and are listed as missing.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from videodiff.state_dicts import CheckpointError, unwrap

ENCODER, DECODER, HEAD = "encoder.", "decoder.", "head."
POS_KEY = "encoder.learned_pos_embed"
# A missing / unexpected encoder key -> the setting that most likely explains it.
_HINTS = {"encoder.learned_pos_embed": "VIT.POS_EMBED", "encoder.cls_token": "VIT.CLS_TOKEN",
          "encoder.cls_pos_embed": "VIT.CLS_TOKEN / VIT.POS_EMBED"}


@dataclass
class LoadReport:
    """What happened to each key; ``summary()`` is what the trainer logs."""
    path: str
    mapped: List[str] = field(default_factory=list)
    resized: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"initialised from {self.path}: {len(self.mapped)} tensors loaded"]
        for label, keys in (("resized", self.resized), ("dropped", self.dropped),
                            ("missing (kept at initialisation)", self.missing),
                            ("unexpected (ignored)", self.unexpected)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): " + ", ".join(_compact(keys)))
        return "\n".join(lines)


def _compact(entries: List[str]) -> List[str]:
    """Collapse entries that share a module and suffix ("decoder.blocks.* (96) (reason)") for the log; encoder and
    decoder keys group one level deeper."""
    groups: Dict[Tuple[str, str], List[str]] = {}
    for entry in entries:
        key, _, rest = entry.partition(" ")
        head = ".".join(key.split(".")[:2 if key.startswith((ENCODER, DECODER)) else 1])
        groups.setdefault((head, rest), []).append(entry)
    return [members[0] if len(members) == 1 else f"{head}.* ({len(members)}){' ' + rest if rest else ''}"
            for (head, rest), members in groups.items()]


def with_encoder_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A bare VisionTransformer state dict (``blocks.0...``) gets the ``encoder.`` prefix downstream models use."""
    if any(k.startswith(ENCODER) for k in state):
        return dict(state)
    return {ENCODER + k: v for k, v in state.items()}


def resize_pos_embed(table: torch.Tensor, grid: Tuple[int, int, int]) -> torch.Tensor:
    """Learned positions [1, T, H, W, D] -> [1, T2, H2, W2, D]: bicubic over (H, W), then linear over T."""
    t, h, w, d = table.shape[1:]
    if (t, h, w) == tuple(grid):
        return table
    x = table[0].float().permute(0, 3, 1, 2)                                          # [T, D, H, W]
    if (h, w) != tuple(grid[1:]):
        x = F.interpolate(x, size=tuple(grid[1:]), mode="bicubic", align_corners=False)
    x = x.permute(2, 3, 1, 0).reshape(-1, d, t)                                       # [H2·W2, D, T]
    if t != grid[0]:
        x = F.interpolate(x, size=grid[0], mode="linear", align_corners=False)
    return x.reshape(grid[1], grid[2], d, grid[0]).permute(3, 0, 1, 2)[None].to(table.dtype)


def _drop_reason(key: str, target: Dict[str, torch.Tensor], drop_head: bool) -> str:
    if not key.startswith((ENCODER, HEAD)):
        return "pretraining-only"
    if key.startswith(ENCODER + "norm.") and key not in target:
        return "encoder final norm; the model pools, then normalises in its head"
    if key.startswith(HEAD) and drop_head:
        return "TRAIN.CHECKPOINT_DROP_HEAD"
    return ""


def _fit(key: str, value: torch.Tensor, want: torch.Tensor, path: str, report: LoadReport) -> torch.Tensor:
    """``value`` in the target's shape: as is, resized (learned positions), or an error naming file and key."""
    if value.shape == want.shape:
        return value
    if key == POS_KEY and value.dim() == 5 and value.shape[-1] == want.shape[-1]:
        report.resized.append(f"{key} {tuple(value.shape[1:4])} -> {tuple(want.shape[1:4])}")
        return resize_pos_embed(value, tuple(want.shape[1:4]))
    hint = "; set TRAIN.CHECKPOINT_DROP_HEAD True to start a new head" if key.startswith(HEAD) else ""
    raise CheckpointError(f"checkpoint {path}: {key} has shape {tuple(value.shape)} but the model's is "
                          f"{tuple(want.shape)}{hint}")


def _check_encoder(report: LoadReport, path: str) -> None:
    """Encoder weights must correspond one to one; name the keys and the setting that likely differs."""
    missing = [k for k in report.missing if k.startswith(ENCODER)]
    extra = [k for k in report.unexpected if k.startswith(ENCODER)]
    if not missing and not extra:
        return
    hints = sorted({_HINTS[k] for k in missing + extra if k in _HINTS}) or ["VIT.* (depth, width, patch size)"]
    parts = [f"{label} ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
             for label, keys in (("encoder keys the checkpoint lacks", missing),
                                 ("encoder keys the model lacks", extra)) if keys]
    raise CheckpointError(f"checkpoint {path} does not fit the model's encoder: " + "; ".join(parts)
                          + f"; check {', '.join(hints)}")


def adapt_state_dict(source: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], path: str,
                     drop_head: bool = False) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """(state dict with only target keys in target shapes, report). ``target`` is the model's state_dict()."""
    report, out = LoadReport(path), {}
    for key, value in with_encoder_prefix(source).items():
        reason = _drop_reason(key, target, drop_head)
        if reason:
            report.dropped.append(f"{key} ({reason})")
        elif key not in target:
            report.unexpected.append(key)
        else:
            out[key] = _fit(key, value, target[key], path, report)
            report.mapped.append(key)
    report.missing = [k for k in target if k not in out]
    _check_encoder(report, path)
    return out, report


def load_pretrained(model: nn.Module, checkpoint: dict, path: str, drop_head: bool = False) -> LoadReport:
    """Load ``checkpoint["model"]`` into ``model`` through ``adapt_state_dict``; returns the report."""
    if "model" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} has no 'model' entry (keys: {', '.join(sorted(checkpoint))})")
    target = unwrap(model)
    state, report = adapt_state_dict(checkpoint["model"], target.state_dict(), path, drop_head)
    target.load_state_dict(state, strict=False)  # adapt_state_dict checked every key; only new head keys are absent
    return report
