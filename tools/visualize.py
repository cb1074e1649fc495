#!/usr/bin/env python
"""DiffMAE generation figures from a checkpoint: mask, run the reverse process over the masked tokens only
(the encoder runs once), write PNG grids (and MP4 / GIF for video). For an l-DAE checkpoint, its paper's Figs. 6-8.

Images: OUT/images.png, one row per sample: original | masked | t=1000 | t=500 | t=0.
Videos: OUT/video_000.png (rows original / masked / output, frames at temporal stride 2) and OUT/video_000.mp4.
l-DAE: OUT/ldae_noise.png (clean | pixel noise | latent noise, per --sigmas), OUT/ldae_denoising.png (clean | noisy
input | denoised, per --ldae-steps) and OUT/ldae_filters.png (the PCA's first 32 directions as p x p x 3 images, a
spacetime direction's frames side by side); for clips also OUT/ldae_video_000.png and .mp4 (rows original, then noisy
(latent noise through the inverse PCA) / denoised per --ldae-steps, frames at temporal stride 2).

Examples:
  python tools/visualize.py --cfg configs/demo/diffmae_tiny.yaml
  python tools/visualize.py --cfg configs/demo/diffmae_tiny.yaml --num 8 --mask center --mask-ratio 0.25 \\
      --steps 100 --out /tmp/vis OUTPUT_DIR output/demo_diffmae
  python tools/visualize.py --cfg configs/demo/ldae_tiny_images.yaml --num 6
  python tools/visualize.py --cfg configs/demo/ldae_tiny_videos.yaml --num 2 --ldae-steps 250,500
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import videodiff  # noqa: E402,F401  (installs the pytorchvideo compat shim first)
import torch  # noqa: E402

from videodiff.config import ConfigError, load_config  # noqa: E402
from videodiff.data import build_dataset  # noqa: E402
from videodiff.data.normalize import ClipNormalizer  # noqa: E402
from videodiff.engine.checkpoint import (CheckpointError, find_latest_checkpoint, load_model_state,  # noqa: E402
                                         load_state)
from videodiff.models.build import build_model  # noqa: E402
from videodiff.models.diffmae import DiffMAE  # noqa: E402
from videodiff.models.ldae import LDAE  # noqa: E402
from videodiff.models.masking import MASK_KINDS, build_mask  # noqa: E402
from videodiff.visualize import render  # noqa: E402
from videodiff.visualize_ldae import render_ldae  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="YAML config the checkpoint was trained with")
    parser.add_argument("--checkpoint", default="", help="checkpoint file (default: newest in OUTPUT_DIR)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"), help="data split (default val)")
    parser.add_argument("--num", type=int, default=4, help="number of samples (default 4)")
    parser.add_argument("--mask", default="random", choices=MASK_KINDS, help="mask type (default random)")
    parser.add_argument("--mask-ratio", type=float, default=None, help="masked fraction (default MASK.RATIO)")
    parser.add_argument("--steps", type=int, default=None, help="reverse steps, strided (default all DIFFUSION.STEPS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask and the sampling noise")
    parser.add_argument("--video-format", default="mp4", choices=("mp4", "gif"), help="movie format for video")
    parser.add_argument("--out", default="", help="output folder (default OUTPUT_DIR/vis)")
    parser.add_argument("--sigmas", default="0.5,1.0,1.4142", help="l-DAE: noise levels of the noise figure")
    parser.add_argument("--ldae-steps", default="", help="l-DAE: steps t of the denoising figure (default 0, T/4, T/2, "
                                                          "T-1)")
    parser.add_argument("overrides", nargs="*", help="KEY VALUE config overrides")
    return parser.parse_intermixed_args(argv)


def load_model(cfg, path: str) -> torch.nn.Module:
    """The config's model with the checkpoint's weights; refuses models that cannot generate."""
    model = build_model(cfg)
    if not isinstance(model, (DiffMAE, LDAE)):
        raise ConfigError(f"MODEL.MODEL_NAME = {cfg.MODEL.MODEL_NAME} has no figures; visualize needs DiffMAE or LDAE")
    load_model_state(model, load_state(path, cfg.TRAIN.CHECKPOINT_WEIGHTS_ONLY)["model"], path)
    return model.eval()


def spread_clips(cfg, split: str, num: int) -> torch.Tensor:
    """``num`` items evenly spaced over ``split`` (folders list images class by class), first copy of each:
    normalised [num, C, T, H, W]."""
    dataset = build_dataset(cfg, split)
    if num < 1 or num > len(dataset):
        raise ValueError(f"--num {num}: the {split} split has {len(dataset)} items")
    clips = torch.stack([dataset[i * len(dataset) // num]["clip"][0] for i in range(num)])
    return ClipNormalizer.from_cfg(cfg)(clips)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.cfg_file, args.overrides)
        path = args.checkpoint or find_latest_checkpoint(cfg.OUTPUT_DIR)
        if not path:
            raise CheckpointError(f"no checkpoint in {cfg.OUTPUT_DIR}/checkpoints; pass --checkpoint PATH")
        model = load_model(cfg, path)
        clips = spread_clips(cfg, args.split, args.num)
        generator = torch.Generator().manual_seed(args.seed)
        out_dir = args.out or os.path.join(cfg.OUTPUT_DIR, "vis")
        if isinstance(model, LDAE):
            steps = [int(t) for t in args.ldae_steps.split(",") if t]
            sigmas = [float(s) for s in args.sigmas.split(",") if s]
            paths = render_ldae(model, clips, out_dir, cfg.DATA.MEAN, cfg.DATA.STD, generator, sigmas, steps,
                                args.video_format)
        else:
            ratio = cfg.MASK.RATIO if args.mask_ratio is None else args.mask_ratio
            mask = build_mask(args.mask, len(clips), model.grid(clips), ratio, generator=generator)
            paths = render(model, clips, mask, out_dir, cfg.DATA.MEAN, cfg.DATA.STD, args.steps, generator,
                           args.video_format)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{path} -> {len(paths)} files in {out_dir}")
    for p in paths:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
