#!/usr/bin/env python
"""Rewrite a checkpoint for another clip length and crop (DiffMAE's K400 extension: 16x224^2 -> 32x280^2).

Learned position embeddings (imported checkpoints, VIT.POS_EMBED learned) are resized to the new token grid,
bicubic in space and linear in time; sin-cos positions are not stored and are regenerated for any grid at run
time. The patch sizes come from the checkpoint's patch embedding: a clip size that does not divide into them is
an error that lists the valid sizes nearby. The result keeps every weight (optimizer, epoch and hook states
are left out: it is a starting point) and loads strictly into the model of the new clip size, e.g. through
TRAIN.CHECKPOINT_FILE_PATH of configs/K400/diffmae_vitl14_ft_32x280.yaml.

Example:
  python tools/extend_clip.py --num-frames 32 --crop 280 \\
      output/k400_diffmae_vitl14_ft/checkpoints/checkpoint_epoch_00050.pyth output/vitl14_32x280_init.pyth
"""
import argparse
import os
import sys
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from fvcore.common.config import CfgNode  # noqa: E402

from videodiff.engine.checkpoint import CheckpointError, load_state  # noqa: E402
from videodiff.models.pretrained import resize_pos_embed  # noqa: E402


def patch_sizes(state: Dict[str, torch.Tensor]) -> Tuple[int, int]:
    """(t_patch, patch) of the checkpoint's spacetime patch embedding [D, C, t, p, p]."""
    keys = [k for k in state if k.endswith("patch_embed.proj.weight")]
    if not keys:
        raise ValueError("the checkpoint has no patch_embed.proj.weight: is it a videodiff ViT checkpoint?")
    weight = state[keys[0]]
    return weight.shape[2], weight.shape[-1]


def check_divisible(name: str, size: int, patch: int, hint: str = "") -> None:
    if size % patch:
        below = (size // patch) * patch
        valid = [v for v in (below - patch, below, below + patch, below + 2 * patch) if v > 0]
        raise ValueError(f"{name} {size} is not divisible by the checkpoint's {patch}-wide patches; valid "
                         f"{name} sizes near it: {', '.join(map(str, valid))}{hint}")


def extend_state_dict(state: Dict[str, torch.Tensor], num_frames: int, crop: int
                      ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """(state for clips of ``num_frames`` x ``crop``^2, report lines). Only learned position tables change."""
    t_patch, patch = patch_sizes(state)
    check_divisible("crop", crop, patch, " (280 needs 14-px patches: ViT-L/14, 280 / 14 = 20)")
    check_divisible("frame count", num_frames, t_patch)
    grid = (num_frames // t_patch, crop // patch, crop // patch)
    out, report = dict(state), [f"patches {t_patch}x{patch}x{patch}: new token grid {grid}"]
    for key, value in state.items():
        if key.endswith("learned_pos_embed"):
            out[key] = resize_pos_embed(value, grid)
            report.append(f"resized {key} {tuple(value.shape[1:4])} -> {grid} (bicubic in space, linear in time)")
    if len(report) == 1:
        report.append("sin-cos positions: nothing stored, regenerated for the new grid at run time")
    return out, report


def extended_cfg(cfg_yaml: str, num_frames: int, crop: int) -> str:
    """The checkpoint's config with the new clip size (empty if it carried none)."""
    if not cfg_yaml:
        return ""
    cfg = CfgNode.load_cfg(cfg_yaml)
    cfg.DATA.NUM_FRAMES, cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE = num_frames, crop, crop
    return cfg.dump()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a videodiff checkpoint (training checkpoint or converted)")
    parser.add_argument("output", help="where to write the extended checkpoint")
    parser.add_argument("--num-frames", type=positive_int, required=True,
                        help="frames per clip of the new model (e.g. 32)")
    parser.add_argument("--crop", type=positive_int, required=True, help="crop size of the new model (e.g. 280)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        saved = load_state(args.source)
        if "model" not in saved:
            raise CheckpointError(f"checkpoint {args.source} has no 'model' entry")
        state, report = extend_state_dict(saved["model"], args.num_frames, args.crop)
    except (CheckpointError, ValueError) as e:
        print(f"error: {args.source}: {e}", file=sys.stderr)
        return 2
    print("\n".join(report))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": state, "cfg": extended_cfg(saved.get("cfg", ""), args.num_frames, args.crop),
                "extended_from": os.path.abspath(args.source)}, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
