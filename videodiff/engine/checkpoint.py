"""Checkpoints: atomic save, newest-complete lookup for auto-resume, safe loading.

Layout: ``OUTPUT_DIR/checkpoints/checkpoint_epoch_{:05d}.pyth`` where the number counts *completed*
epochs; a mid-epoch checkpoint (pre-emption, TRAIN.CHECKPOINT_ITER_PERIOD) adds the iterations done in
the next epoch: ``checkpoint_epoch_00002_iter_000040.pyth`` = 2 epochs + 40 iterations. A file is
written to a temporary name, fsynced and renamed into place, so a kill during the write never leaves a
truncated file under a real checkpoint name. Checkpoints are never deleted by videodiff; the only files it removes
are its own partial ``.tmp.<pid>`` writes (a failed save's, and at start those that killed runs left behind).

Where checkpoints go is checked before training (``prepare_checkpoint_dir``). A save that fails (disk full, quota,
a vanished mount) removes its partial file, keeps every earlier checkpoint and stops with one line naming the path,
the size it needed and the space left. Auto-resume takes the newest checkpoint that loads (``load_newest``): a
truncated newest file (a kill during a copy, a full disk elsewhere) is reported by name and left in place.
"""
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Tuple

import torch
from iopath.common.file_io import g_pathmgr
from torch import nn

from videodiff.engine.logging import logger
from videodiff.state_dicts import CheckpointError, unwrap

_NAME = re.compile(r"^checkpoint_epoch_(\d{5})(?:_iter_(\d{6}))?\.pyth$")
_PARTIAL = re.compile(r"^checkpoint_epoch_\d{5}(?:_iter_\d{6})?\.pyth\.tmp\.\d+$")


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
    try:
        with g_pathmgr.open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError ("unexpected pos")
        _remove_quietly(tmp)  # a partial file would keep the disk full
        raise CheckpointError(_save_failure(path, state, e)) from None
    return path


def _save_failure(path: str, state: Dict[str, Any], error: BaseException) -> str:
    """One line: the path, why, the size the checkpoint needs, the space left, and that nothing earlier was lost."""
    needed = _tensor_bytes(state)
    try:
        free: Optional[int] = shutil.disk_usage(os.path.dirname(path)).free
    except OSError:
        free = None
    why = getattr(error, "strerror", None)
    if not why:  # torch.save hides the OSError behind "unexpected pos"; the free space tells what happened
        why = "No space left on device" if free is not None and free < needed else str(error).splitlines()[0]
    space = f"{free / 2 ** 20:.0f} MB are free there" if free is not None else "the free space could not be read"
    return (f"cannot write checkpoint {path}: {why}; it needs about {needed / 2 ** 20:.0f} MB and {space}. The "
            f"partial file was removed and every earlier checkpoint kept; free space (or move OUTPUT_DIR) and run "
            f"the same command to resume")


def _tensor_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def prepare_checkpoint_dir(output_dir: str) -> str:
    """Before training: make ``checkpoints/``, prove a file can be written there, and remove the partial
    ``.tmp.<pid>`` files that killed runs left (naming each). Raises CheckpointError in one line otherwise."""
    folder = checkpoint_dir(output_dir)
    probe = os.path.join(folder, f".write_test.{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"checkpoints cannot be written to {folder}: {e.strerror or e}") from None
    for name in sorted(os.listdir(folder)):
        if _PARTIAL.match(name):
            os.remove(os.path.join(folder, name))
            logger.info(f"removed {os.path.join(folder, name)}: a partial checkpoint left by an interrupted save")
    return folder


def list_checkpoints(output_dir: str) -> List[str]:
    """Every ``checkpoint_epoch_*.pyth``, newest first (temporary files are ignored)."""
    folder = checkpoint_dir(output_dir)
    if not g_pathmgr.exists(folder):
        return []
    found = [(_position(m), n) for n in g_pathmgr.ls(folder) for m in [_NAME.match(n)] if m]
    return [os.path.join(folder, name) for _, name in sorted(found, reverse=True)]


def find_latest_checkpoint(output_dir: str) -> Optional[str]:
    """Newest ``checkpoint_epoch_*.pyth`` (temporary files are ignored), or None."""
    paths = list_checkpoints(output_dir)
    return paths[0] if paths else None


def load_newest(output_dir: str, weights_only: bool = True) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(path, state) of the newest checkpoint that can be read, or None when there is none.

    A newer file that cannot be read is skipped with a warning naming it, and left where it is."""
    for path in list_checkpoints(output_dir):
        try:
            return path, load_state(path, weights_only)
        except CheckpointError as e:
            logger.warning(f"{e}; left in place, trying the checkpoint before it")
    return None


def _position(match: "re.Match") -> tuple:
    """(completed epochs, iterations into the next epoch) of a checkpoint file name."""
    return int(match.group(1)), int(match.group(2) or 0)


def load_state(path: str, weights_only: bool = True) -> Dict[str, Any]:
    """Read a checkpoint file. ``weights_only=True`` refuses pickled code; opt out only for trusted files."""
    if not g_pathmgr.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    head = b""
    try:
        with g_pathmgr.open(path, "rb") as f:
            head = f.read(4)
            f.seek(0)
            return torch.load(f, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files; all mean "unreadable"
        raise CheckpointError(f"cannot read checkpoint {path}: {_why_unreadable(head, e)}") from None


def _why_unreadable(head: bytes, error: Exception) -> str:
    """Our own reason for a failed ``torch.load``. torch answers random bytes with advice to load them with
    ``weights_only=False`` (which would run whatever they unpickle to); this says what the file is instead."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # an empty file too  # torch's zip format / a legacy pickle
        return f"not a PyTorch checkpoint (it starts with bytes {head!r})"
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found or "Weights only load failed" in text:
        what = f" such as {found.group(1)}" if found else ""
        return (f"it holds pickled Python objects{what}, which safe loading (weights_only) refuses because "
                f"unpickling can run code; if you trust the file, set TRAIN.CHECKPOINT_WEIGHTS_ONLY False")
    return f"truncated or corrupt ({type(error).__name__}: {text.splitlines()[0][:200]})"


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


def resume(path: str, model: nn.Module, optimizer=None, scaler=None, weights_only: bool = True,
           state: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Restore model (+ optimizer, scaler) from ``path`` (or its already-read ``state``); returns the whole state
    (epoch, cfg, extras)."""
    state = load_state(path, weights_only) if state is None else state
    if "model" not in state:
        raise CheckpointError(f"checkpoint {path} has no 'model' entry (keys: {', '.join(sorted(state))})")
    load_model_state(model, state["model"], path)
    if optimizer is not None and state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state
