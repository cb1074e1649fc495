#!/usr/bin/env python
"""Fit l-DAE's patch-wise linear AE or VAE tokenizer (paper Sec. 4.2) with Adam on random patches of the train split,
or (--kind conv_vae) its convolutional VAE on whole train images (videodiff/engine/fit_conv_vae.py: reconstruction +
CONV_VAE.KL_WEIGHT x KL, optionally a perceptual and an adversarial loss, all set by CONV_VAE.*; Table 1's tokenizers).
The rest of this text is about the patch-wise kinds.

Patches are drawn from the train loader exactly as tools/fit_pca.py draws them (videodiff/data/patches.py: the
config's augmentation and DATA.MEAN / STD normalisation, VIT.TEMPORAL_PATCH_SIZE x VIT.PATCH_SIZE^2 x
VIT.IN_CHANNELS patches, up to --patches-per-clip per clip, RNG_SEED; with LDAE.TOKENIZER_SCOPE frame, single-frame
patches of video and d = LDAE.LATENT_DIM / VIT.TEMPORAL_PATCH_SIZE) until --num-patches; they are kept in memory
(num-patches x D float32) and their mean is the tokenizer's centre. Then --steps Adam steps on minibatches of
--batch-patches drawn from them (with replacement, RNG_SEED), the learning rate decaying from --lr to 0 on a half
cosine, fit d = LDAE.LATENT_DIM (models/tokenizers.py: LinearPatchAE, the AE ||x - U^T V x||^2 or, --kind vae, plus
--kl-weight x KL[q(z|x) || N(0, I)]). Last, each latent component's RMS on the fit patches becomes its scale (unit
variance latents, as l-DAE's noise schedules assume).

It prints, on the same fit patches, the reconstruction MSE per value (normalised units) of the AE / VAE (the
posterior mean's for the VAE) and of PCA at the same d, the optimum any linear AE can reach, and how much of the
AE's decoder span lies in PCA's top-d subspace (1: the same subspace); for a VAE also its KL, how many latent
dimensions carry information, and both at the optimum of the linear VAE's loss for this KL weight (probabilistic
PCA: directions of variance below kl_weight / 2 collapse to the prior). Deterministic for a fixed RNG_SEED (and
thread count).

Output: --out, else the config's LDAE.TOKENIZER_FILE when LDAE.TOKENIZER is this --kind, else
OUTPUT_DIR/<kind>_d<d>.pth. One file holds one d. Options come before the KEY VALUE overrides. Exit status 0, or 2
with one line for a usage, config or data error.

Examples:
  python tools/fit_tokenizer.py --cfg configs/demo/ldae_tiny_images.yaml --kind ae --steps 500 LDAE.LATENT_DIM 16
  python tools/fit_tokenizer.py --cfg configs/ImageNet/ldae/t2_vae_d016.yaml --kind vae \\
      DATA.PATH_TO_DATA_DIR /data/imagenet
  python tools/fit_tokenizer.py --cfg configs/demo/ldae_tiny_conv_vae.yaml --kind conv_vae --steps 2000
  python tools/fit_tokenizer.py --cfg configs/ImageNet/ldae/t1_1_dit_class_cond.yaml --kind conv_vae \\
      --steps 200000 DATA.PATH_TO_DATA_DIR /data/imagenet
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import videodiff  # noqa: E402,F401  (installs the pytorchvideo compat shim first)
import torch  # noqa: E402

from videodiff.cli import run_reporting_errors  # noqa: E402
from videodiff.config import load_config  # noqa: E402
from videodiff.data.patches import TrainPatches  # noqa: E402
from videodiff.engine.fit_conv_vae import fit_conv_vae  # noqa: E402
from videodiff.models.build import conv_vae_args, tokenizer_latent_dim, tokenizer_layout  # noqa: E402
from videodiff.models.conv_vae import ConvVAE, save_conv_vae  # noqa: E402
from videodiff.models.tokenizers import (LinearPatchAE, PatchAETokenizer, PCAAccumulator,  # noqa: E402
                                         gaussian_kl, save_patch_ae)

KINDS = ("ae", "vae", "conv_vae")
DEFAULT_LR = {"ae": 1e-2, "vae": 1e-2, "conv_vae": 2e-4}
ACTIVE_KL = 0.01  # nats per patch: a VAE latent dimension below this carries (almost) nothing about the patch


def positive_int(text: str) -> int:
    value = int(text.replace(",", "").replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", dest="cfg_file", required=True,
                        help="YAML config (its DATA / TRAIN / VIT / LDAE keys)")
    parser.add_argument("--kind", required=True, choices=KINDS,
                        help="linear patch AE or VAE, or the convolutional VAE (sized and weighted by CONV_VAE.*)")
    parser.add_argument("--steps", type=positive_int, default=5000, help="Adam steps (default %(default)s)")
    parser.add_argument("--batch-patches", type=positive_int, default=4096,
                        help="patches per Adam step (default %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="Adam's peak learning rate, cosine-decayed to 0 (default 1e-2 for ae / vae, 2e-4 for "
                             "conv_vae)")
    parser.add_argument("--kl-weight", type=non_negative_float, default=None,
                        help="--kind vae: weight of the KL term (default 1, the paper's formula as written)")
    parser.add_argument("--stat-images", type=positive_int, default=10_000,
                        help="--kind conv_vae: train images that measure the latent statistics and the final "
                             "reconstruction error (default %(default)s); each step takes a TRAIN.BATCH_SIZE batch")
    parser.add_argument("--num-patches", type=positive_int, default=200_000,
                        help="fit patches kept in memory (default %(default)s)")
    parser.add_argument("--patches-per-clip", type=positive_int, default=64,
                        help="random patches drawn from each clip, at most its patch count (default %(default)s)")
    parser.add_argument("--out", default="", help="the tokenizer file (default: LDAE.TOKENIZER_FILE of an ae / vae "
                                                  "config of this kind, else OUTPUT_DIR/<kind>_d<d>.pth)")
    parser.add_argument("--batches-per-log", type=positive_int, default=50,
                        help="a progress line every K loader batches (default %(default)s)")
    parser.add_argument("--steps-per-log", type=positive_int, default=None,
                        help="a loss line every K steps (default: 10 lines in all)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.kind == "ae" and args.kl_weight is not None:
        parser.error("--kl-weight is for --kind vae (an AE has no KL term)")
    if args.kind == "vae" and args.kl_weight is None:
        args.kl_weight = 1.0
    if args.kind == "conv_vae" and args.kl_weight is not None:
        parser.error("--kind conv_vae takes its KL weight from CONV_VAE.KL_WEIGHT")
    args.lr = args.lr or DEFAULT_LR[args.kind]
    return args


def output_path(cfg, kind: str, d: int, out: str) -> str:
    """--out, else LDAE.TOKENIZER_FILE if the config's LDAE.TOKENIZER is ``kind``, else OUTPUT_DIR/<kind>_d<d>.pth
    (conv_vae: OUTPUT_DIR/conv_vae_c<CONV_VAE.LATENT_CHANNELS>.pth)."""
    configured = cfg.LDAE.TOKENIZER_FILE if cfg.LDAE.TOKENIZER == kind else ""
    name = f"conv_vae_c{cfg.CONV_VAE.LATENT_CHANNELS}" if kind == "conv_vae" else f"{kind}_d{d:03d}"
    return out or configured or os.path.join(cfg.OUTPUT_DIR, f"{name}.pth")


def collect(cfg, layout: tuple, num_patches: int, per_clip: int, batches_per_log: int):
    """-> (patches [num_patches, D] float32, their PCA accumulator, passes over the train split)."""
    stream = TrainPatches(cfg, layout, num_patches, per_clip, batches_per_log)
    acc, chunks = PCAAccumulator(stream.D), []
    for chunk in stream:
        acc.update(chunk)
        chunks.append(chunk.float())
    return torch.cat(chunks), acc, stream.passes


def train(model: LinearPatchAE, patches: torch.Tensor, steps: int, batch: int, lr: float,
          generator: torch.Generator, steps_per_log: int) -> dict:
    """Adam on minibatches of ``patches`` drawn with ``generator``, lr cosine-decayed from ``lr`` to 0. -> the last
    step's losses (floats, per patch)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    start, values = time.perf_counter(), {}
    for step in range(1, steps + 1):
        x = patches[torch.randint(len(patches), (batch,), generator=generator)]
        losses = model.losses(x)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        schedule.step()
        values = {k: float(v.detach()) for k, v in losses.items()}
        if not math.isfinite(values["loss"]):
            raise ValueError(f"the {model.kind} fit diverged at step {step} (loss {values['loss']}): lower --lr")
        if step % steps_per_log == 0 or step == steps:
            extra = f", KL {values['kl']:.4g} nats" if "kl" in values else ""
            print(f"step {step}/{steps}: loss {values['loss']:.4g} per patch, recon MSE per value "
                  f"{values['recon'] / model.D:.4g}{extra}, {time.perf_counter() - start:.0f} s", flush=True)
    return values


@torch.no_grad()
def evaluate(model: LinearPatchAE, tokenizer: PatchAETokenizer, patches: torch.Tensor, chunk: int = 65536) -> dict:
    """On ``patches``: the tokenizer's reconstruction MSE per value, the latents' per-component variance after
    scaling, and for a VAE the mean KL per patch and per latent dimension."""
    sq, var, kl = 0.0, torch.zeros(tokenizer.d, dtype=torch.float64), torch.zeros(tokenizer.d, dtype=torch.float64)
    for part in patches.split(chunk):
        z = tokenizer.encode(part[None])[0]
        sq += (tokenizer.decode(z[None])[0] - part).double().pow(2).sum().item()
        var += z.double().pow(2).sum(0)
        if model.logvar is not None:
            mu = (part - model.mean) @ model.encoder.T
            kl += gaussian_kl(mu.unsqueeze(-1), model.logvar.unsqueeze(-1)).double().sum(0)  # per dimension
    n = len(patches)
    result = {"recon_mse": sq / (n * tokenizer.D), "latent_var": var / n}
    if model.logvar is not None:
        kl_dims = kl / n
        result.update(kl=kl_dims.sum().item(), active=int((kl_dims > ACTIVE_KL).sum()))
    return result


def vae_optimum(eigenvalues: torch.Tensor, d: int, kl_weight: float) -> tuple:
    """(recon MSE per value, active dimensions) at the optimum of the linear VAE's loss for this d and KL weight w,
    from the fit patches' PCA eigenvalues: it is probabilistic PCA with noise variance s^2 = w / 2 (``LinearPatchAE``),
    which keeps the top-d directions with variance lambda > s^2, each shrunk to leave s^4 / lambda, and collapses the
    rest. A fit short of that optimum may reconstruct better (fewer dimensions collapsed yet), at a higher loss."""
    s2, lam = kl_weight / 2, eigenvalues[:d]
    kept = lam > s2
    error = torch.where(kept, s2 ** 2 / lam.clamp_min(1e-30), lam).sum() + eigenvalues[d:].sum()
    return error.item() / len(eigenvalues), int(kept.sum())


def span_overlap(decoder: torch.Tensor, basis: torch.Tensor) -> float:
    """How much of the span of ``decoder`` rows [d, D] lies in the span of the orthonormal rows ``basis`` [d, D]:
    ||basis Q||_F^2 / d with Q an orthonormal basis of the decoder's span (1: the same subspace; 0: orthogonal)."""
    q = torch.linalg.qr(decoder.double().T)[0]                              # [D, d]
    return (basis.double() @ q).pow(2).sum().item() / decoder.shape[0]


def run_conv_vae(args, cfg) -> int:
    """--kind conv_vae: train the conv VAE of CONV_VAE.* on whole train images, then write its tokenizer file."""
    out = output_path(cfg, "conv_vae", 0, args.out)
    vae = ConvVAE(**conv_vae_args(cfg))
    c = cfg.CONV_VAE
    print(f"conv VAE: stride {c.STRIDE}, {c.LATENT_CHANNELS} latent channels, width {c.WIDTH}, "
          f"{sum(p.numel() for p in vae.parameters()):,} parameters; KL weight {c.KL_WEIGHT:g}, perceptual "
          f"{c.PERCEPTUAL_WEIGHT:g}, adversarial {c.ADVERSARIAL_WEIGHT:g} from step {c.ADVERSARIAL_START}")
    tokenizer, losses, images = fit_conv_vae(cfg, vae, args.steps, args.lr, args.stat_images, args.steps_per_log)
    print(f"reconstruction MSE per value (posterior mean, normalised units) on {images:,} train images: "
          f"{losses['recon_mse_posterior_mean']:.4g}")
    print(f"latent channels: mean {tokenizer.latent_mean.min().item():.4g} .. {tokenizer.latent_mean.max().item():.4g}"
          f", RMS {tokenizer.latent_scale.min().item():.4g} .. {tokenizer.latent_scale.max().item():.4g}; "
          f"d = {tokenizer.d} per {cfg.VIT.PATCH_SIZE}x{cfg.VIT.PATCH_SIZE} token")
    source = (f"tools/fit_tokenizer.py --cfg {args.cfg_file} --kind conv_vae --steps {args.steps} --lr {args.lr:g}"
              + f" {' '.join(args.overrides)}".rstrip()
              + f"; train split of {cfg.DATA.PATH_TO_DATA_DIR} ({cfg.TRAIN.DATASET}), RNG_SEED {cfg.RNG_SEED}")
    save_conv_vae(out, tokenizer, losses, images, source)
    print(f"wrote {out}")
    return 0


def run(args) -> int:
    cfg = load_config(args.cfg_file, args.overrides)
    if args.kind == "conv_vae":
        return run_conv_vae(args, cfg)
    layout = tokenizer_layout(cfg)  # a token's patches, or single frames with LDAE.TOKENIZER_SCOPE frame
    t_patch, p, channels = layout
    D, d = t_patch * p * p * channels, tokenizer_latent_dim(cfg)
    if not 1 <= d <= D:
        raise ValueError(f"LDAE.LATENT_DIM = {d} must lie in 1 .. {D} (the values of one {t_patch}x{p}x{p}x{channels} "
                         f"patch)")
    out = output_path(cfg, args.kind, d, args.out)
    patches, acc, passes = collect(cfg, layout, args.num_patches, args.patches_per_clip, args.batches_per_log)
    mean, basis, eigenvalues = acc.finish()
    print(f"patches used: {len(patches):,} ({passes} pass{'es' if passes > 1 else ''} over the train split)")
    print(f"D = {D} ({t_patch}x{p}x{p}x{channels} patches), d = {d}, kind {args.kind}"
          + (f", KL weight {args.kl_weight:g}" if args.kind == "vae" else ""))

    generator = torch.Generator().manual_seed(cfg.RNG_SEED)
    model = LinearPatchAE(mean.float(), d, variational=args.kind == "vae", kl_weight=args.kl_weight or 0.0,
                          generator=generator)
    steps_per_log = args.steps_per_log or max(args.steps // 10, 1)
    last = train(model, patches, args.steps, args.batch_patches, args.lr, generator, steps_per_log)
    tokenizer = model.tokenizer(patches)
    losses = report(args, tokenizer, evaluate(model, tokenizer, patches), eigenvalues, basis, len(patches))
    losses["last_step_loss"] = last["loss"]
    save_patch_ae(out, tokenizer, layout, losses, len(patches), source_line(args, cfg, len(patches)),
                  logvar=model.logvar if args.kind == "vae" else None,
                  kl_weight=args.kl_weight if args.kind == "vae" else None)
    print(f"wrote {out}")
    return 0


def report(args, tokenizer: PatchAETokenizer, result: dict, eigenvalues: torch.Tensor, basis: torch.Tensor,
           num_patches: int) -> dict:
    """Print the fit against PCA's optimum (and, for a VAE, against the linear VAE's); return the losses to save."""
    D, d = len(eigenvalues), tokenizer.decoder.shape[0]
    pca_mse = eigenvalues[d:].sum().item() / D
    overlap = span_overlap(tokenizer.decoder, basis[:d])
    print(f"reconstruction MSE per value on the {num_patches:,} fit patches (normalised units; variance per value "
          f"{eigenvalues.sum().item() / D:.4g}):")
    print(f"  {args.kind:<4} d = {d}: {result['recon_mse']:.4g}  (after {args.steps} steps)")
    print(f"  pca  d = {d}: {pca_mse:.4g}  (the optimum of any linear AE at this d)")
    ratio = result["recon_mse"] / pca_mse if pca_mse > 0 else float("inf")
    print(f"  {args.kind} / pca: {ratio:.4g}; decoder span in PCA's top-{d} subspace: {overlap:.4f}")
    losses = {"recon_mse": result["recon_mse"], "pca_recon_mse": pca_mse, "span_overlap": overlap}
    if args.kind == "vae":
        best, active = vae_optimum(eigenvalues, d, args.kl_weight)
        print(f"  KL {result['kl']:.4g} nats per patch; {result['active']} of {d} latent dimensions carry "
              f"information (KL > {ACTIVE_KL} nats)")
        print(f"  at the linear VAE's optimum for KL weight {args.kl_weight:g}: {best:.4g}, with {active} of {d} "
              f"dimensions (PCA directions of variance > {args.kl_weight / 2:g} kept, shrunk; the rest collapse)")
        losses["kl"], losses["vae_optimum_recon_mse"] = result["kl"], best
    scale = tokenizer.scale
    print(f"latent scale (RMS of V (x - mean) per component): {scale.min().item():.4g} .. {scale.max().item():.4g}; "
          f"scaled latent variance {result['latent_var'].min().item():.4g} .. {result['latent_var'].max().item():.4g}")
    return losses


def source_line(args, cfg, num_patches: int) -> str:
    """How the file was made, stored in it: the command and the data it read."""
    return (f"tools/fit_tokenizer.py --cfg {args.cfg_file} --kind {args.kind} --steps {args.steps} "
            f"--batch-patches {args.batch_patches} --lr {args.lr:g}"
            + (f" --kl-weight {args.kl_weight:g}" if args.kind == "vae" else "")
            + f" {' '.join(args.overrides)}".rstrip()
            + f"; train split of {cfg.DATA.PATH_TO_DATA_DIR} ({cfg.TRAIN.DATASET}), RNG_SEED {cfg.RNG_SEED}, "
            f"{num_patches:,} patches, up to {args.patches_per_clip} per clip")


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_reporting_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
