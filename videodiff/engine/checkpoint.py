"""Checkpoints: atomic save, newest-complete lookup for auto-resume, safe loading.

Layout: ``OUTPUT_DIR/checkpoints/checkpoint_epoch_{:05d}.pyth`` where the number counts *completed*
epochs; a mid-epoch checkpoint (pre-emption, TRAIN.CHECKPOINT_ITER_PERIOD) adds the iterations done in
the next epoch: ``checkpoint_epoch_00002_iter_000040.pyth`` = 2 epochs + 40 iterations. A file is
written to a temporary name, fsynced and renamed into place, so a kill during the write never leaves a
truncated file under a real checkpoint name. Checkpoints are never deleted by videodiff.
"""
import os
import re
from typing import Any, Dict, Optional

import torch
from iopath.common.file_io import g_pathmgr
from torch import nn

from videodiff.state_dicts import CheckpointError, unwrap

_NAME = re.compile(r"^checkpoint_epoch_(\d{5})(?:_iter_(\d{6}))?\.pyth$")


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def checkpoint_path(output_dir: str, epoch: int, iteration: int = 0) -> str:
    """Path for the state after ``epoch`` completed epochs plus ``iteration`` steps of the next one."""
    suffix = f"_iter_{iteration:06d}" if iteration else ""
    return os.path.join(checkpoint_dir(output_dir), f"checkpoint_epoch_{epoch:05d}{suffix}.pyth")


def save_checkpoint(output_dir: str, epoch: int, model: nn.Module, optimizer=None, scaler=None,
                    cfg_yaml: str = "", extra: Optional[Dict[str, Any]] = None, iteration: int = 0) -> str:
    """Write the state after ``epoch`` completed epochs (+ ``iteration`` steps); returns the path.

    Call on the main rank only.
    """
    path = checkpoint_path(output_dir, epoch, iteration)
    g_pathmgr.mkdirs(os.path.dirname(path))
    state = {
        "epoch": epoch,
        "iter": iteration,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "cfg": cfg_yaml,
        **(extra or {}),
    }
    tmp = f"{path}.tmp.{os.getpid()}"
    with g_pathmgr.open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one
    return path


def find_latest_checkpoint(output_dir: str) -> Optional[str]:
    """Newest ``checkpoint_epoch_*.pyth`` (temporary files are ignored), or None."""
    folder = checkpoint_dir(output_dir)
    if not g_pathmgr.exists(folder):
        return None
    found = [(_position(m), n) for n in g_pathmgr.ls(folder) for m in [_NAME.match(n)] if m]
    return os.path.join(folder, max(found)[1]) if found else None


def _position(match: "re.Match") -> tuple:
    """(completed epochs, iterations into the next epoch) of a checkpoint file name."""
    return int(match.group(1)), int(match.group(2) or 0)


def load_state(path: str, weights_only: bool = True) -> Dict[str, Any]:
    """Read a checkpoint file. ``weights_only=True`` refuses pickled code; opt out only for trusted files."""
    if not g_pathmgr.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with g_pathmgr.open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files; all mean "unreadable"
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


def load_model_state(model: nn.Module, state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Strictly load ``state_dict``; a mismatch names the file and the first offending keys."""
    target = unwrap(model)
    own = target.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                 if keys]
        raise CheckpointError(f"checkpoint {path} does not fit model {type(target).__name__}: " + "; ".join(parts))
    target.load_state_dict(state_dict)


def resume(path: str, model: nn.Module, optimizer=None, scaler=None, weights_only: bool = True) -> Dict[str, Any]:
    """Restore model (+ optimizer, scaler) from ``path``; returns the whole state (epoch, cfg, extras)."""
    state = load_state(path, weights_only)
    if "model" not in state:
        raise CheckpointError(f"checkpoint {path} has no 'model' entry (keys: {', '.join(sorted(state))})")
    load_model_state(model, state["model"], path)
    if optimizer is not None and state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state
