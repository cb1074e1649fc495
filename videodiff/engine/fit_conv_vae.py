"""Fit l-DAE's convolutional VAE tokenizer (``tools/fit_tokenizer.py --kind conv_vae``) on the train split.

Per step, on a batch of frames x (the train loader's clips, normalised by DATA.MEAN / STD, frames stacked):

    z ~ q(z|x) = N(mean, e^logvar)  (reparameterised), x^ = g(z)
    rec  = ||x - x^||^2 + PERCEPTUAL_WEIGHT · LPIPS(x, x^) · (C·H·W)            per image, summed over its values
    loss = rec + KL_WEIGHT · KL[q(z|x) || N(0, I)] + w_adv · ADVERSARIAL_WEIGHT · (-E D(x^))   (after ADVERSARIAL_START)

with w_adv VQGAN's adaptive weight, and the discriminator D trained on the same batch with the hinge loss. This is
LDM's ``LPIPSWithDiscriminator`` objective with the paper's squared error in place of LDM's L1 (Sec. 4.2 writes
||x - g(f(x))||^2), the perceptual term broadcast to every value as LDM does. Adam (LDM's betas (0.5, 0.9)) for both,
the learning rate cosine-decayed to 0. After the fit, each latent channel's mean and RMS around it are measured on
``stat_images`` train images (posterior means), which l-DAE's latents are normalised by.
"""
import math
import time
from typing import Dict, Iterator, Optional, Tuple

import torch
from fvcore.common.config import CfgNode

from videodiff.data.loader import build_loader, set_loader_epoch
from videodiff.data.normalize import ClipNormalizer
from videodiff.models.conv_vae import ConvVAE, ConvVAETokenizer, gaussian_kl_map
from videodiff.models.tokenizer_losses import PatchDiscriminator, PerceptualLoss, adaptive_weight, hinge_d_loss

BETAS = (0.5, 0.9)  # LDM's Adam betas for the autoencoder and the discriminator


def frame_batches(cfg: CfgNode) -> Iterator[torch.Tensor]:
    """Normalised frames [B·T, C, H, W] from the train loader, pass after pass (a new shuffle each pass)."""
    loader, normalize = build_loader(cfg, "train", 0, 1), ClipNormalizer.from_cfg(cfg)
    epoch = 0
    while True:
        set_loader_epoch(loader, epoch)
        for batch in loader:
            clip = normalize(batch["clip"])
            yield clip.transpose(1, 2).flatten(0, 1)
        epoch += 1


class ConvVAEObjective:
    """The losses of one step (module docstring); ``perceptual`` / ``disc`` are None when their weight is 0."""

    def __init__(self, cfg: CfgNode, vae: ConvVAE):
        c = cfg.CONV_VAE
        self.vae, self.kl_weight = vae, c.KL_WEIGHT
        self.perceptual_weight, self.adv_weight, self.adv_start = c.PERCEPTUAL_WEIGHT, c.ADVERSARIAL_WEIGHT, \
            c.ADVERSARIAL_START
        self.perceptual = (PerceptualLoss.from_file(c.PERCEPTUAL_CHECKPOINT, cfg.DATA.MEAN, cfg.DATA.STD)
                           if c.PERCEPTUAL_WEIGHT > 0 else None)
        self.disc = PatchDiscriminator(vae.in_chans) if c.ADVERSARIAL_WEIGHT > 0 else None

    def generator_losses(self, x: torch.Tensor, step: int, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        mean, logvar = self.vae.encode(x)
        noise = torch.randn(mean.shape, generator=generator).to(mean)
        recon = self.vae.decode(mean + (0.5 * logvar).exp() * noise)
        out = {"recon_mse": (recon - x).pow(2).mean().detach(), "kl": gaussian_kl_map(mean, logvar).mean()}
        rec = (recon - x).pow(2).flatten(1).sum(1)
        if self.perceptual is not None:
            distance = self.perceptual(x, recon)                                    # [B]
            rec = rec + self.perceptual_weight * distance * x[0].numel()
            out["perceptual"] = distance.mean().detach()
        out["rec"] = rec.mean()
        out["loss"] = out["rec"] + self.kl_weight * out["kl"]
        out["recon"] = recon
        if self.disc is not None and step >= self.adv_start:
            out["g_adv"] = -self.disc(recon).mean()
            out["adv_weight"] = adaptive_weight(out["rec"], out["g_adv"], self.vae.last_layer()) * self.adv_weight
            out["loss"] = out["loss"] + out["adv_weight"] * out["g_adv"]
        return out

    def disc_loss(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        return hinge_d_loss(self.disc(x), self.disc(recon.detach()))


def _cosine(optimizer: torch.optim.Optimizer, steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))


def train_conv_vae(cfg: CfgNode, vae: ConvVAE, steps: int, lr: float, steps_per_log: int,
                   generator: torch.Generator) -> Dict[str, float]:
    """``steps`` Adam steps of the objective on the train loader's frames; -> the last step's losses (floats)."""
    objective = ConvVAEObjective(cfg, vae)
    opt = torch.optim.Adam(vae.parameters(), lr=lr, betas=BETAS)
    schedules = [_cosine(opt, steps)]
    if objective.disc is not None:
        d_opt = torch.optim.Adam(objective.disc.parameters(), lr=lr, betas=BETAS)
        schedules.append(_cosine(d_opt, steps))
    frames, start, values = frame_batches(cfg), time.perf_counter(), {}
    for step in range(1, steps + 1):
        x = next(frames)
        out = objective.generator_losses(x, step, generator)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        if "g_adv" in out:
            d_loss = objective.disc_loss(x, out["recon"])
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            out["d_loss"] = d_loss
        for schedule in schedules:
            schedule.step()
        values = {k: float(v.detach()) for k, v in out.items() if k != "recon" and v.dim() == 0}
        if not math.isfinite(values["loss"]):
            raise ValueError(f"the conv VAE fit diverged at step {step} (loss {values['loss']}): lower --lr")
        if step % steps_per_log == 0 or step == steps:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            print(f"step {step}/{steps}: {shown}, {time.perf_counter() - start:.0f} s", flush=True)
    return values


@torch.no_grad()
def latent_statistics(cfg: CfgNode, vae: ConvVAE, num_images: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(mean [c], RMS around it [c], images used): the posterior means' per-channel statistics on train images."""
    total = torch.zeros(vae.latent_channels, dtype=torch.float64)
    squares, count, images = total.clone(), 0, 0
    for x in frame_batches(cfg):
        mean = vae.encode(x[:num_images - images])[0].double()
        total += mean.sum(dim=(0, 2, 3))
        squares += mean.pow(2).sum(dim=(0, 2, 3))
        count += mean.numel() // vae.latent_channels
        images += len(mean)
        if images >= num_images:
            break
    centre = total / count
    rms = (squares / count - centre.pow(2)).clamp_min(0).sqrt()
    return centre, torch.maximum(rms, 1e-5 * rms.max()).clamp_min(1e-12), images


@torch.no_grad()
def reconstruction_mse(tokenizer: ConvVAETokenizer, cfg: CfgNode, num_images: int) -> float:
    """Mean squared error per value (normalised units) of decode(encode(x)) on train images."""
    sq, values, images = 0.0, 0, 0
    for x in frame_batches(cfg):
        x = x[:num_images - images]
        mean = tokenizer.vae.encode(x)[0]
        sq += (tokenizer.vae.decode(mean) - x).double().pow(2).sum().item()
        values, images = values + x.numel(), images + len(x)
        if images >= num_images:
            return sq / values


def fit_conv_vae(cfg: CfgNode, vae: ConvVAE, steps: int, lr: float, stat_images: int,
                 steps_per_log: Optional[int] = None) -> Tuple[ConvVAETokenizer, Dict[str, float], int]:
    """Train ``vae`` and wrap it as the frozen tokenizer: -> (tokenizer, losses for the file, images in the stats)."""
    generator = torch.Generator().manual_seed(cfg.RNG_SEED)
    last = train_conv_vae(cfg, vae.train(), steps, lr, steps_per_log or max(steps // 10, 1), generator)
    vae.eval()
    centre, scale, images = latent_statistics(cfg, vae, stat_images)
    tokenizer = ConvVAETokenizer(vae, centre.float(), scale.float(), cfg.VIT.PATCH_SIZE, cfg.VIT.TEMPORAL_PATCH_SIZE)
    losses = dict(last, recon_mse_posterior_mean=reconstruction_mse(tokenizer, cfg, stat_images))
    return tokenizer, {k: v for k, v in losses.items() if k != "loss"} | {"last_step_loss": last["loss"]}, images
