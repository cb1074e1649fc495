#!/usr/bin/env python
"""Import a public ViT checkpoint (image MAE, MAE-ST, VideoMAE) into videodiff's keys.

Prints where every source key went (or why it was dropped) and the config overrides a model needs to use
the result; writes {"model": state dict, "conversion": report} for TRAIN.CHECKPOINT_FILE_PATH (fine-tuning,
linear probing) or TEST.CHECKPOINT_FILE_PATH (fine-tuned checkpoints that kept their head).

Examples:
  python tools/convert_checkpoint.py --format mae mae_pretrain_vit_base.pth out/mae_vitb.pyth
  python tools/convert_checkpoint.py --format mae_st --num-frames 16 mae_st_vitl_k400.pth out/maest.pyth
  python tools/convert_checkpoint.py --format videomae --num-frames 16 --img-size 224 \\
      videomae_vitb_k400_pretrain.pth out/videomae_vitb.pyth
  # then, e.g.:
  python tools/run_net.py --cfg configs/K400/diffmae_vitl_ft.yaml TRAIN.CHECKPOINT_FILE_PATH out/maest.pyth \\
      <the VIT.* / DATA.* overrides printed by this tool>

The source is read safely: torch.load(weights_only=True), which builds tensors and plain containers only,
plus argparse.Namespace (the training arguments MAE and VideoMAE store under "args"). A checkpoint is a
pickle, and a pickle can run code when loaded: a file holding any other Python object is refused, naming it.
--unsafe-load reads the full pickle (weights_only=False) -- only for files you trust. The written file loads
with weights_only=True.
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from videodiff.models.convert import FORMATS, convert_state_dict  # noqa: E402

# Where the state dict sits inside the checkpoints these projects publish.
WRAPPERS = ("model", "module", "state_dict", "model_state")
# The only non-tensor, non-container type the safe load accepts: MAE / MAE-ST / VideoMAE save their argparse
# arguments in the checkpoint. Its attributes are still limited to what weights_only allows.
SAFE_TYPES = (argparse.Namespace,)
UNSAFE_FLAG = "--unsafe-load"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class ConvertError(Exception):
    """What is wrong with the source file, as one line (the tool prints it and exits with 2)."""


def load_checkpoint(path: str, unsafe: bool = False):
    """``torch.load`` of ``path`` on the CPU: weights only (plus SAFE_TYPES) unless ``unsafe``.
    Any failure is a ConvertError naming the file and what is wrong."""
    if os.path.isdir(path):
        raise ConvertError(f"{path}: is a folder, not a checkpoint file")
    if not os.path.exists(path):
        raise ConvertError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise ConvertError(f"{path}: the file is empty (0 bytes)")
    try:
        if unsafe:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(list(SAFE_TYPES)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (whatever the file makes torch.load raise is about the file)
        raise ConvertError(_load_failure(path, e, unsafe)) from None


def _load_failure(path: str, error: Exception, unsafe: bool) -> str:
    # weights_only wraps the unpickler's own error in a long advice text; the cause is the wrapped error.
    inner = error.__context__ if str(error).startswith("Weights only load failed") and error.__context__ else error
    text = str(inner)
    found = _GLOBAL.search(text) if not unsafe else None
    if found and _exists(found.group(1)):
        return (f"{path}: refused to load: it pickles {found.group(1)}, which a weights-only load does not "
                f"build (a checkpoint is a pickle, and a pickle can run code when loaded); if you trust this file, "
                f"rerun with {UNSAFE_FLAG}")
    reason = next((line.strip() for line in text.splitlines() if line.strip()), "")
    reason = reason.split(". ")[0].rstrip(".")[:200]
    return (f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or another format): "
            f"{type(inner).__name__}{': ' + reason if reason else ''}")


def _exists(name: str) -> bool:
    """False when ``name`` is in an already-imported module that lacks it: a pickle cut short mid-name
    (``torch._utils._rebui``) is a damaged file, not a foreign object. Nothing is imported to decide."""
    module, _, attr = name.rpartition(".")
    return module not in sys.modules or hasattr(sys.modules[module], attr)


def unwrap_checkpoint(checkpoint, path: str) -> dict:
    """The state dict inside a loaded checkpoint (or the checkpoint itself when it is one)."""
    if not isinstance(checkpoint, dict):
        raise ConvertError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint (expected a state dict, "
                           f"or a dict with one under {', '.join(WRAPPERS)})")
    for key in WRAPPERS:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    if checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        return checkpoint
    keys = ", ".join(sorted(map(str, checkpoint))) or "none"
    raise ConvertError(f"{path}: holds no state dict under {', '.join(WRAPPERS)} (top-level keys: {keys})")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the public checkpoint (.pth)")
    parser.add_argument("output", help="where to write the videodiff checkpoint")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="the source's key layout")
    parser.add_argument("--num-frames", type=int, default=16,
                        help="frames of the source model's clips (joint or missing position tables only)")
    parser.add_argument("--img-size", type=int, default=224,
                        help="crop size of the source model (VideoMAE without stored positions)")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads (default: the published model of that width)")
    parser.add_argument(UNSAFE_FLAG, action="store_true",
                        help="read the source as a full pickle (torch.load weights_only=False), which can run "
                             "code: only for files you trust")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        state = unwrap_checkpoint(load_checkpoint(args.source, args.unsafe_load), args.source)
        try:
            state, report = convert_state_dict(state, args.format, args.num_frames, args.img_size, args.num_heads)
        except (KeyError, ValueError, IndexError, TypeError, RuntimeError) as e:
            raise ConvertError(f"{args.source} ({args.format}): {e}") from None
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in report.mapped:
        print(f"mapped   {line}")
    for line in report.dropped:
        print(f"dropped  {line}")
    print(f"settings {report.overrides()}")
    conversion = {"format": args.format, "source": os.path.abspath(args.source), "mapped": report.mapped,
                  "dropped": report.dropped, "settings": {k: str(v) for k, v in report.settings.items()}}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        torch.save({"model": state, "conversion": conversion}, args.output)
    except OSError as e:
        print(f"error: {args.output}: cannot be written: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({len(state)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
