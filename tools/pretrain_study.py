#!/usr/bin/env python
"""Is there a learning signal? Pretrain DiffMAE, MAE or l-DAE through the real loop, then measure it honestly.

(a) Pretext loss on val (fixed masks, steps and noise) against trivial predictors of the same targets:
    "patch mean" = each masked target patch predicted by its own mean (an oracle constant; for norm_pix targets
    this is 0, loss ~1) and "visible mean" = every masked pixel predicted by the mean of the clip's visible
    pixels. DiffMAE is also scored at fixed steps t (t = T-1: the input is pure noise, only the context helps).
(b) DiffMAE inpainting, PSNR in pixel space ([0, 1] after un-normalising with DATA.MEAN / STD) over the masked
    target slices, mean over clips: the one-step x_0 prediction from pure noise (t = T-1), DDPM samples (the
    full reverse chain, or --sample-steps strided steps), and the visible-mean fill. Pixel targets only
    (DIFFMAE.NORM_PIX_LOSS False), so no ground-truth statistics of masked patches are needed.
(c) Linear probe: frozen encoder, all tokens (no masking), mean-pooled -> standardised -> logistic regression
    (scikit-learn), C by 5-fold cross-validation on train, accuracy on test (and on val, and val + test); for
    the pretrained encoder, the same architecture at random init, and raw pixels. Train / val / test items use
    the test-time transform (centre view). An l-DAE's encoder is its DiT's first half folded at LDAE.PROBE_T into a
    plain ViT reading the clean image (``LDAE.export_encoder``), as its probe configs do; its (a) is the denoising
    loss on val with fixed steps and noise.

Writes OUTPUT_DIR/study.json and prints it. Training is skipped when OUTPUT_DIR already holds the last epoch
(auto-resume); --no-train evaluates the newest checkpoint as it is.

Examples:
  python tools/pretrain_study.py --cfg configs/demo/diffmae_tiny_long.yaml
  python tools/pretrain_study.py --cfg configs/demo/mae_tiny_long.yaml --no-train DATA.PATH_TO_DATA_DIR demo_data
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import videodiff  # noqa: E402,F401  (installs the pytorchvideo compat shim first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_score  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from videodiff.config import load_config  # noqa: E402
from videodiff.data import collate_clips  # noqa: E402
from videodiff.data.imagefolder import TEST_CROP_FRACTION, ImageFolderClips  # noqa: E402
from videodiff.data.kinetics import KineticsDataset  # noqa: E402
from videodiff.data.normalize import ClipNormalizer  # noqa: E402
from videodiff.data.transforms import build_transform  # noqa: E402
from videodiff.engine.checkpoint import find_latest_checkpoint, load_model_state, load_state  # noqa: E402
from videodiff.engine.launch import run as run_training  # noqa: E402
from videodiff.models.build import build_model, vit_args  # noqa: E402
from videodiff.models.diffmae import DiffMAE  # noqa: E402
from videodiff.models.ldae import LDAE  # noqa: E402
from videodiff.models.masking import gather_tokens  # noqa: E402
from videodiff.models.patchify import patchify  # noqa: E402
from videodiff.models.vit import VisionTransformer  # noqa: E402

PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


# ---------------------------------------------------------------- data: every split with the test-time transform
def eval_dataset(cfg, split: str):
    """``split``'s items, one centre view each, transformed as at test time (no random crops)."""
    d = cfg.DATA
    if cfg.TEST.DATASET == "imagefolder":
        transform = build_transform(cfg, "val", test_crop_fraction=TEST_CROP_FRACTION)
        return ImageFolderClips(os.path.join(d.PATH_TO_DATA_DIR, split), "val", transform,
                                num_classes=cfg.MODEL.NUM_CLASSES)
    return KineticsDataset(os.path.join(d.PATH_TO_DATA_DIR, f"{split}.csv"), "val", d.NUM_FRAMES, d.SAMPLING_RATE,
                           build_transform(cfg, "val"), path_prefix=d.PATH_PREFIX, separator=d.PATH_LABEL_SEPARATOR,
                           num_classes=cfg.MODEL.NUM_CLASSES, base_dir=d.PATH_TO_DATA_DIR, backend=d.DECODING_BACKEND,
                           target_fps=d.TARGET_FPS)


def batches(cfg, split: str, batch_size: int = 50):
    """Yield (normalised clip [B, C, T, H, W], label [B]) over ``split`` in order."""
    normalize = ClipNormalizer.from_cfg(cfg)
    for batch in DataLoader(eval_dataset(cfg, split), batch_size=batch_size, collate_fn=collate_clips):
        yield normalize(batch["clip"]), batch["label"]


# ---------------------------------------------------------------- (a) pretext loss vs trivial predictors
def visible_mean(model, clip: torch.Tensor, ids_keep: torch.Tensor, values_per_token: int) -> torch.Tensor:
    """Per clip and channel, the mean of the visible pixels, laid out as [B, 1, values_per_token] (channel fastest)."""
    visible = gather_tokens(patchify(clip, model.t_patch, model.patch_size), ids_keep)   # [B, K, t·p·p·C]
    c = clip.shape[1]
    means = visible.reshape(clip.shape[0], -1, c).mean(1)                                # [B, C]
    return means.repeat(1, values_per_token // c)[:, None]


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return (pred.float() - target.float()).pow(2).mean().item()


def target_slices(model, clip: torch.Tensor, ids_masked: torch.Tensor) -> torch.Tensor:
    """DiffMAE's clean targets of the masked tokens, [B, M, p·p·C]."""
    return gather_tokens(model.targets(clip), ids_masked)


def diffmae_pretext(model: DiffMAE, clip, mask, gen) -> dict:
    """Model loss at uniform t and at fixed t, and the trivial predictors' losses, for one batch."""
    steps = model.diffusion.num_steps
    x0 = target_slices(model, clip, mask.ids_masked)
    uniform = torch.randint(0, steps, (clip.shape[0],), generator=gen)
    out = {"model": model.one_step_x0(clip, mask, uniform, gen)["mse"].item(),
           "patch_mean": mse(x0.mean(-1, keepdim=True).expand_as(x0), x0)}
    if not model.norm_pix_loss:
        out["visible_mean"] = mse(visible_mean(model, clip, mask.ids_keep, x0.shape[-1]).expand_as(x0), x0)
    for t in (steps - 1, 3 * steps // 4, steps // 2, steps // 4, 0):
        out[f"model_t{t}"] = model.one_step_x0(clip, mask, t, gen)["mse"].item()
    return out


def mae_pretext(model, clip, mask) -> dict:
    """MAE's loss on the masked tokens (full patches) and the trivial predictors' losses, for one batch."""
    target = model.targets(clip)
    pred = model.forward_decoder(model.forward_encoder(clip, mask.ids_keep), mask, model.grid(clip))
    masked = gather_tokens(target, mask.ids_masked)
    out = {"model": model.forward_loss(pred, target, mask.mask).item(),
           "patch_mean": mse(masked.mean(-1, keepdim=True).expand_as(masked), masked)}
    if not model.norm_pix_loss:
        out["visible_mean"] = mse(visible_mean(model, clip, mask.ids_keep, masked.shape[-1]).expand_as(masked), masked)
    return out


# ---------------------------------------------------------------- (b) inpainting PSNR in pixel space
def psnr(pred: torch.Tensor, target: torch.Tensor, mean, std) -> torch.Tensor:
    """Per-clip PSNR [B] (dB, data range 1) of slices [B, M, p·p·C] after un-normalising (channel fastest)."""
    c = len(mean)
    scale, shift = torch.tensor(std).repeat(pred.shape[-1] // c), torch.tensor(mean).repeat(pred.shape[-1] // c)
    err = ((pred.float() * scale + shift).clamp(0, 1) - (target.float() * scale + shift).clamp(0, 1)).pow(2)
    return -10 * torch.log10(err.flatten(1).mean(1).clamp(min=1e-10))


def inpainting(model: DiffMAE, clip, mask, gen, sample_steps, mean, std) -> dict:
    """Per-clip PSNR lists of the one-step x_0 (t = T-1), a DDPM sample, and the visible-mean fill."""
    x0 = target_slices(model, clip, mask.ids_masked)
    fill = visible_mean(model, clip, mask.ids_keep, x0.shape[-1]).expand_as(x0)
    one_step = model.one_step_x0(clip, mask, model.diffusion.num_steps - 1, gen)["pred"]
    sample = model.generate(clip, mask=mask, num_sample_steps=sample_steps, generator=gen)["x0"]
    return {name: psnr(pred, x0, mean, std).tolist()
            for name, pred in (("one_step_x0", one_step), ("ddpm_sample", sample), ("visible_mean_fill", fill))}


@torch.no_grad()
def ldae_pretext(model: LDAE, cfg, seed: int = 0) -> dict:
    """(a) for l-DAE: its training loss on val, with the steps and noise fixed by ``seed``."""
    torch.manual_seed(seed)
    total, count = 0.0, 0
    for clip, label in batches(cfg, "val"):
        total += float(model(clip, label)["loss"]) * len(clip)
        count += len(clip)
    return {"pretext_loss": {"denoising": round(total / count, 5)}}


def evaluate_pretext(cfg, model, sample_steps, seed: int = 0) -> dict:
    """(a) and, for pixel-target DiffMAE, (b) on the val split with fixed masks, steps and noise."""
    if isinstance(model, LDAE):
        return ldae_pretext(model, cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    losses, psnrs, count = {}, {}, 0
    for clip, _ in batches(cfg, "val"):
        mask = model.mask(clip, gen)
        if isinstance(model, DiffMAE):
            part = diffmae_pretext(model, clip, mask, gen)
            if not model.norm_pix_loss:
                for k, v in inpainting(model, clip, mask, gen, sample_steps, cfg.DATA.MEAN, cfg.DATA.STD).items():
                    psnrs.setdefault(k, []).extend(v)
        else:
            part = mae_pretext(model, clip, mask)
        for k, v in part.items():
            losses[k] = losses.get(k, 0.0) + v * len(clip)
        count += len(clip)
    out = {"pretext_loss": {k: round(v / count, 5) for k, v in losses.items()}}
    if psnrs:
        out["inpainting_psnr_db"] = {k: round(float(np.mean(v)), 3) for k, v in psnrs.items()}
    return out


# ---------------------------------------------------------------- (c) linear probe
@torch.no_grad()
def features(cfg, split: str, encoder=None):
    """(X, y) of ``split``: mean-pooled encoder tokens (all tokens, no mask), or raw pixels when encoder is None."""
    xs, ys = [], []
    for clip, label in batches(cfg, split):
        xs.append(clip.flatten(1) if encoder is None else encoder.forward_features(clip).mean(1))
        ys.append(label)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def probe(cfg, encoder=None) -> dict:
    """Logistic regression on standardised features; C by 5-fold cross-validation on train (val and test stay
    unseen); accuracy on test, on val, and on both (200 items: a standard error of about 3.5 points)."""
    (xtr, ytr), (xva, yva), (xte, yte) = (features(cfg, s, encoder) for s in ("train", "val", "test"))
    scaler = StandardScaler().fit(xtr)
    xtr, xva, xte = scaler.transform(xtr), scaler.transform(xva), scaler.transform(xte)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    cv = {c: cross_val_score(LogisticRegression(C=c, max_iter=2000), xtr, ytr, cv=folds).mean() for c in PROBE_CS}
    best = max(cv, key=cv.get)
    clf = LogisticRegression(C=best, max_iter=2000).fit(xtr, ytr)
    both = clf.score(np.concatenate([xva, xte]), np.concatenate([yva, yte]))
    return {"C": best, "cv_acc": round(cv[best], 4), "test_acc": round(clf.score(xte, yte), 4),
            "val_acc": round(clf.score(xva, yva), 4), "val_test_acc": round(both, 4)}


# ---------------------------------------------------------------- the study
def load_pretrained(cfg, path: str = ""):
    path = path or find_latest_checkpoint(cfg.OUTPUT_DIR)
    if not path:
        raise FileNotFoundError(f"no checkpoint in {cfg.OUTPUT_DIR}/checkpoints")
    model = build_model(cfg)
    load_model_state(model, load_state(path)["model"], path)
    return model.eval(), path


def probe_encoder(cfg, model):
    """The encoder a probe reads: DiffMAE's / MAE's ``encoder``; an l-DAE's DiT encoder folded at LDAE.PROBE_T."""
    if not isinstance(model, LDAE):
        return model.encoder
    # An l-DAE on conv VAE latents reads the latent map: its frozen encoder is the ViT's stem (exported with it).
    stem = model.tokenizer if not model.tokenizer.LINEAR and model.input_space == "latent" else None
    vit = VisionTransformer(**dict(vit_args(cfg), depth=model.dit.encoder_depth), norm_eps=1e-6, final_norm=False,
                            stem=stem)
    vit.load_state_dict(model.export_encoder(cfg.LDAE.PROBE_T))
    return vit.eval()


def random_encoder(cfg):
    torch.manual_seed(cfg.RNG_SEED)  # the same initial weights the pretraining run started from
    return probe_encoder(cfg, build_model(cfg).eval())


def study(cfg, sample_steps, train_seconds, checkpoint: str = "") -> dict:
    model, path = load_pretrained(cfg, checkpoint)
    result = {"config": cfg.OUTPUT_DIR, "checkpoint": path, "train_seconds": train_seconds}
    if isinstance(model, DiffMAE):
        result["steps_with_sqrt_alpha_bar_below_0.05"] = model.diffusion.fraction_of_steps_with_low_signal(0.05)
    tick = time.perf_counter()
    result.update(evaluate_pretext(cfg, model, sample_steps))
    result["probe"] = {"pretrained": probe(cfg, probe_encoder(cfg, model)),
                       "random_init": probe(cfg, random_encoder(cfg)),
                       "raw_pixels": probe(cfg, None)}
    result["eval_seconds"] = round(time.perf_counter() - tick, 1)
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="pretraining config (DiffMAE or MAE)")
    parser.add_argument("--no-train", action="store_true", help="evaluate the newest checkpoint without training")
    parser.add_argument("--checkpoint", default="", help="evaluate this checkpoint instead of the newest")
    parser.add_argument("--sample-steps", type=int, default=None,
                        help="DDPM reverse steps for (b), strided (default: all DIFFUSION.STEPS)")
    parser.add_argument("overrides", nargs="*", help="KEY VALUE config overrides")
    return parser.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.cfg_file, args.overrides)
    train_seconds = None
    if not args.no_train:
        tick = time.perf_counter()
        run_training(args.cfg_file, args.overrides)
        train_seconds = round(time.perf_counter() - tick, 1)
    torch.set_grad_enabled(False)
    result = study(cfg, args.sample_steps, train_seconds, args.checkpoint)
    print(json.dumps(result, indent=1), flush=True)  # first: minutes of evaluation are never lost to a bad path
    name = f"study_{os.path.basename(args.checkpoint).split('.')[0]}.json" if args.checkpoint else "study.json"
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)  # --no-train --checkpoint may write next to a new folder
    with open(os.path.join(cfg.OUTPUT_DIR, name), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
