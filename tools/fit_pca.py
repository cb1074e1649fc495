#!/usr/bin/env python
"""Fit l-DAE's patch-wise PCA tokenizer: eigen-decomposition of many random patches of the train split.

The train loader is built from the config exactly as training builds it (same augmentation, DATA.MEAN / STD
normalisation, VIT.TEMPORAL_PATCH_SIZE x VIT.PATCH_SIZE^2 x VIT.IN_CHANNELS patches in patchify's layout; for a
video config with LDAE.TOKENIZER_SCOPE frame, 1 x VIT.PATCH_SIZE^2 x VIT.IN_CHANNELS patches of every frame). Up to
--patches-per-clip random patches of each clip (drawn with RNG_SEED) are added to a streaming fit, O(D^2)
memory, until --num-patches are reached; the loader's batches are at most 8 clips whatever TRAIN.BATCH_SIZE, so
memory stays bounded for 16 x 224^2 video too. If one pass over the split is not enough, the tool says so and passes
over it again (new crops, new draws) as often as needed (videodiff/data/patches.py, shared with
tools/fit_tokenizer.py). It writes the full basis (any d loads from the one
file) and prints, per d, the fraction of the variance kept and the mean squared reconstruction error per value
of the fit patches, in normalised units.

Output: --out, else the config's LDAE.TOKENIZER_FILE when set and LDAE.TOKENIZER is pca, else OUTPUT_DIR/pca.pth.
Options come before the KEY VALUE overrides. Exit status 0, or 2 with one line for a usage, config or data error.

Examples:
  python tools/fit_pca.py --cfg configs/demo/diffmae_tiny_images.yaml --num-patches 100000 --out output/pca.pth
  python tools/fit_pca.py --cfg configs/ImageNet/diffmae_vitb.yaml --out output/pca_in1k_16x16.pth \\
      DATA.PATH_TO_DATA_DIR /data/imagenet
  python tools/fit_pca.py --cfg configs/demo/ldae_tiny_videos.yaml --num-patches 100000
  python tools/fit_pca.py --cfg configs/K400/ldae_vitl.yaml DATA.PATH_TO_DATA_DIR /data/k400    # 2x16x16x3, D = 1536
  python tools/fit_pca.py --cfg configs/K400/ldae_vitl_frame.yaml DATA.PATH_TO_DATA_DIR /data/k400  # 1x16x16x3
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import videodiff  # noqa: E402,F401  (installs the pytorchvideo compat shim first)
import torch  # noqa: E402

from videodiff.cli import run_reporting_errors  # noqa: E402
from videodiff.config import load_config  # noqa: E402
from videodiff.data.patches import TrainPatches  # noqa: E402
from videodiff.models.build import tokenizer_layout  # noqa: E402
from videodiff.models.tokenizers import PCAAccumulator, save_pca  # noqa: E402

REPORT_DIMS = (4, 8, 16, 32, 64, 128)


def positive_int(text: str) -> int:
    value = int(text.replace(",", "").replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="YAML config (its DATA / TRAIN / VIT keys)")
    parser.add_argument("--num-patches", type=positive_int, default=1_000_000,
                        help="patches to fit on (default %(default)s)")
    parser.add_argument("--patches-per-clip", type=positive_int, default=64,
                        help="random patches drawn from each clip, at most its patch count (default %(default)s)")
    parser.add_argument("--out", default="", help="the PCA file (default: LDAE.TOKENIZER_FILE of a pca config, "
                                                  "else OUTPUT_DIR/pca.pth)")
    parser.add_argument("--batches-per-log", type=positive_int, default=50,
                        help="a progress line every K batches (default %(default)s)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def output_path(cfg, out: str) -> str:
    """--out, else LDAE.TOKENIZER_FILE if the config has it set for a PCA (never an AE / VAE config's file), else
    OUTPUT_DIR/pca.pth."""
    ldae = getattr(cfg, "LDAE", None)
    configured = getattr(ldae, "TOKENIZER_FILE", "") if getattr(ldae, "TOKENIZER", "pca") == "pca" else ""
    return out or configured or os.path.join(cfg.OUTPUT_DIR, "pca.pth")


def fit(cfg, num_patches: int, per_clip: int, batches_per_log: int) -> tuple:
    """Stream train patches into a PCAAccumulator until num_patches. Returns (accumulator, passes over the split)."""
    patches = TrainPatches(cfg, tokenizer_layout(cfg), num_patches, per_clip, batches_per_log)
    acc = PCAAccumulator(patches.D)
    for chunk in patches:
        acc.update(chunk)
    return acc, patches.passes


def report(eigenvalues: torch.Tensor) -> list:
    """Lines: per d, the variance fraction kept and the mean squared reconstruction error per value."""
    total, dim = eigenvalues.sum().item(), len(eigenvalues)
    lines = [f"variance per value {total / dim:.4g} (normalised units)",
             "     d  variance kept  recon MSE per value"]
    for d in (d for d in REPORT_DIMS if d <= dim):
        kept = eigenvalues[:d].sum().item()
        lines.append(f"{d:6d}  {kept / total if total else 1.0:13.4f}  {(total - kept) / dim:19.4g}")
    return lines


def run(args) -> int:
    cfg = load_config(args.cfg_file, args.overrides)
    out = output_path(cfg, args.out)
    layout = tokenizer_layout(cfg)
    acc, passes = fit(cfg, args.num_patches, args.patches_per_clip, args.batches_per_log)
    mean, basis, eigenvalues = acc.finish()
    source = (f"tools/fit_pca.py --cfg {args.cfg_file} {' '.join(args.overrides)}".strip() +
              f"; train split of {cfg.DATA.PATH_TO_DATA_DIR} ({cfg.TRAIN.DATASET}), RNG_SEED {cfg.RNG_SEED}, "
              f"up to {args.patches_per_clip} patches per clip")
    save_pca(out, mean, basis, eigenvalues, layout, acc.count, source)
    t_patch, p, channels = layout
    print(f"patches used: {acc.count:,} ({passes} pass{'es' if passes > 1 else ''} over the train split)")
    print(f"D = {len(mean)} ({t_patch}x{p}x{p}x{channels} patches)")
    print("\n".join(report(eigenvalues)))
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_reporting_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
