#!/usr/bin/env python
"""Fit l-DAE's patch-wise PCA tokenizer: eigen-decomposition of many random patches of the train split.

The train loader is built from the config exactly as training builds it (same augmentation, DATA.MEAN / STD
normalisation, VIT.TEMPORAL_PATCH_SIZE x VIT.PATCH_SIZE^2 x VIT.IN_CHANNELS patches in patchify's layout). Up to
--patches-per-clip random patches of each clip (drawn with RNG_SEED) are added to a streaming fit, O(D^2)
memory, until --num-patches are reached; if one pass over the split is not enough, the tool says so and passes
over it again (new crops, new draws) as often as needed. It writes the full basis (any d loads from the one
file) and prints, per d, the fraction of the variance kept and the mean squared reconstruction error per value
of the fit patches, in normalised units.

Output: --out, else the config's LDAE.TOKENIZER_FILE when set, else OUTPUT_DIR/pca.pth. Options come before the
KEY VALUE overrides. Exit status 0, or 2 with one line for a usage, config or data error.

Examples:
  python tools/fit_pca.py --cfg configs/demo/diffmae_tiny_images.yaml --num-patches 100000 --out output/pca.pth
  python tools/fit_pca.py --cfg configs/ImageNet/diffmae_vitb.yaml --out output/pca_in1k_16x16.pth \\
      DATA.PATH_TO_DATA_DIR /data/imagenet
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import videodiff  # noqa: E402,F401  (installs the pytorchvideo compat shim first)
import torch  # noqa: E402

from videodiff.config import load_config  # noqa: E402
from videodiff.data.loader import build_loader, set_loader_epoch  # noqa: E402
from videodiff.models.patchify import patchify  # noqa: E402
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
    parser.add_argument("--out", default="", help="the PCA file (default: LDAE.TOKENIZER_FILE, else "
                                                  "OUTPUT_DIR/pca.pth)")
    parser.add_argument("--batches-per-log", type=positive_int, default=50,
                        help="a progress line every K batches (default %(default)s)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def output_path(cfg, out: str) -> str:
    """--out, else LDAE.TOKENIZER_FILE if the config has it set, else OUTPUT_DIR/pca.pth."""
    configured = getattr(getattr(cfg, "LDAE", None), "TOKENIZER_FILE", "")
    return out or configured or os.path.join(cfg.OUTPUT_DIR, "pca.pth")


def patch_layout(cfg) -> tuple:
    """(t_patch, p, C) of the config's patches."""
    return cfg.VIT.TEMPORAL_PATCH_SIZE, cfg.VIT.PATCH_SIZE, cfg.VIT.IN_CHANNELS


def sample_patches(clip: torch.Tensor, layout: tuple, per_clip: int, generator: torch.Generator) -> torch.Tensor:
    """clip [B, C, T, H, W] -> [B·k, D]: k = min(per_clip, N) distinct random patches of each clip."""
    t_patch, p, channels = layout
    if clip.shape[1] != channels:
        raise ValueError(f"the loader's clips have {clip.shape[1]} channels but VIT.IN_CHANNELS = {channels}")
    patches = patchify(clip, t_patch, p)                                   # [B, N, D]
    b, n, dim = patches.shape
    index = torch.rand(b, n, generator=generator).argsort(dim=1)[:, :min(per_clip, n)]
    return patches.gather(1, index.unsqueeze(-1).expand(-1, -1, dim)).reshape(-1, dim)


def fit(cfg, num_patches: int, per_clip: int, batches_per_log: int) -> tuple:
    """Stream train patches into a PCAAccumulator until num_patches. Returns (accumulator, passes over the split)."""
    layout = patch_layout(cfg)
    acc = PCAAccumulator(layout[0] * layout[1] ** 2 * layout[2])
    loader = build_loader(cfg, "train", 0, 1)
    generator = torch.Generator().manual_seed(cfg.RNG_SEED)
    start, step, epoch = time.perf_counter(), 0, 0
    while acc.count < num_patches:
        set_loader_epoch(loader, epoch)
        before = acc.count
        for batch in loader:
            acc.update(sample_patches(batch["clip"], layout, per_clip, generator)[:num_patches - acc.count])
            step += 1
            if step % batches_per_log == 0:
                print(f"batch {step} (pass {epoch + 1}): {acc.count:,} / {num_patches:,} patches, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
            if acc.count >= num_patches:
                break
        epoch += 1
        if acc.count == before:
            raise ValueError("the train loader gave no batches")
        if epoch == 1 and acc.count < num_patches:
            passes = -(-num_patches // acc.count)
            print(f"one pass over the train split gives {acc.count:,} patches, fewer than {num_patches:,}: passing "
                  f"over it again with new crops and patch draws, {passes} passes in all", flush=True)
    return acc, epoch


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
    layout = patch_layout(cfg)
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
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as e:  # ConfigError, dataset and fit errors are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
