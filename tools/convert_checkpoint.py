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

The source files are full pickles from other projects: they are read with weights_only=False, so convert
only files you trust. The written file loads with weights_only=True.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from videodiff.models.convert import FORMATS, convert_state_dict  # noqa: E402

# Where the state dict sits inside the checkpoints these projects publish.
WRAPPERS = ("model", "module", "state_dict", "model_state")


def unwrap_checkpoint(checkpoint: dict, path: str) -> dict:
    for key in WRAPPERS:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    if all(torch.is_tensor(v) for v in checkpoint.values()):
        return checkpoint
    raise SystemExit(f"error: {path} holds no state dict under {', '.join(WRAPPERS)} "
                     f"(top-level keys: {', '.join(sorted(checkpoint))})")


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
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    checkpoint = torch.load(args.source, map_location="cpu", weights_only=False)
    try:
        state, report = convert_state_dict(unwrap_checkpoint(checkpoint, args.source), args.format,
                                           args.num_frames, args.img_size, args.num_heads)
    except (KeyError, ValueError) as e:
        print(f"error: {args.source} ({args.format}): {e}", file=sys.stderr)
        return 2
    for line in report.mapped:
        print(f"mapped   {line}")
    for line in report.dropped:
        print(f"dropped  {line}")
    print(f"settings {report.overrides()}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    conversion = {"format": args.format, "source": os.path.abspath(args.source), "mapped": report.mapped,
                  "dropped": report.dropped, "settings": {k: str(v) for k, v in report.settings.items()}}
    torch.save({"model": state, "conversion": conversion}, args.output)
    print(f"wrote {args.output} ({len(state)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
