"""l-DAE: a latent denoising autoencoder (Chen et al., "Deconstructing Denoising Diffusion Models for Self-Supervised
Learning"), and every step of the paper's trajectory from DiT to it, as options of one model.

Read top to bottom, the training step is the paper:

    patchify -> tokenize (PCA: z_0 = encode(x_0)) -> noise in the latent, z_t = γ_t z_0 + σ_t ε
             -> the network input: z_t (latent space) or decode(z_t) (image space, through the inverse PCA)
             -> DiT conditioned on t -> predict ε, z_0, or the original image x_0 -> λ_t-weighted loss

Conventions:

* Patches are flat [B, N, D] in ``patchify.py``'s layout (t_patch·p·p·C), so images (one frame) and clips share it.
  The image-space input is ``decode(z_t)``, which lies in the span of the first d PCA components (plus the mean):
  the PCA reconstruction error is part of what the network must undo (paper Sec. 4.3, "Predict original image").
* Targets and losses (``forward_loss``), all means over tokens and dimensions, times λ_t (``noise_levels.py``):
  ``eps`` (latent output): ε;  ``z0``: z_0 (latent output) or decode(z_0) (image output);  ``image`` (image output):
  the original patches x_0, with the residue r = V (x_0 - net) in the tokenizer's full orthonormal basis weighted
  1 on the first d components and ``residual_weight`` (0.1) on the rest.
* Probing and fine-tuning (``export_encoder``): the first ``encoder_depth`` DiT blocks at a fixed step t, with the
  conditioning folded into LayerNorm affines and residual gates, and the input map (tokenizer encode, for a latent
  input, then the DiT's input Linear) folded into one Conv3d patch embedding: a plain ``VisionTransformer`` state dict
  (no final norm) that reads the clean image.
"""
import logging
from typing import Dict, Optional

import torch
from torch import nn

from videodiff.models.dit import DiT, fold_encoder
from videodiff.models.masking import Grid
from videodiff.models.noise_levels import PREDICTIONS, loss_weight, noise_schedule
from videodiff.models.patchify import patchify
from videodiff.models.tokenizers import PatchTokenizer

SPACES = ("latent", "image")
logger = logging.getLogger(__name__)


class LDAE(nn.Module):
    """Tokenizer (frozen) + DiT denoiser; ``forward(clip, label) -> {"loss"}`` like every model."""

    def __init__(self, tokenizer: PatchTokenizer, patch_size: int = 16, t_patch: int = 1, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 encoder_depth: Optional[int] = None, cond_dim: Optional[int] = None, schedule: str = "linear_sigma",
                 num_steps: int = 1000, sigma_max: float = 2 ** 0.5, single_sigma: float = (1 / 3) ** 0.5,
                 predict: str = "image", input_space: str = "image", output_space: str = "image",
                 loss_weight_kind: str = "auto", residual_weight: float = 0.1, num_classes: int = 0,
                 class_dropout: float = 0.1, act_checkpoint: bool = False):
        super().__init__()
        check_ldae_choices(predict, input_space, output_space, tokenizer)
        if num_classes:
            logger.warning(f"l-DAE is class-conditional ({num_classes} classes): this run trains on labels, so its "
                           f"probe is not a self-supervised result (the paper's gray Table 1 line)")
        if tokenizer.D != t_patch * patch_size * patch_size * in_chans:
            raise ValueError(f"the tokenizer works on {tokenizer.D}-value patches, but {t_patch}x{patch_size}x"
                             f"{patch_size}x{in_chans} patches have {t_patch * patch_size * patch_size * in_chans}")
        self.patch_size, self.t_patch, self.in_chans = patch_size, t_patch, in_chans
        self.predict, self.input_space, self.output_space = predict, input_space, output_space
        self.tokenizer = tokenizer.requires_grad_(False)
        d, big_d = tokenizer.d, tokenizer.D
        self.dit = DiT(d if input_space == "latent" else big_d, d if output_space == "latent" else big_d,
                       embed_dim, depth, num_heads, mlp_ratio, cond_dim=cond_dim, num_classes=num_classes,
                       encoder_depth=encoder_depth, class_dropout=class_dropout, act_checkpoint=act_checkpoint)
        with torch.device("cpu"):  # schedule arrays are computed on the CPU, also when built under a meta device
            gamma, sigma = noise_schedule(schedule, num_steps, sigma_max, single_sigma)
            lam = loss_weight(loss_weight_kind, predict, gamma, sigma)
        self.num_steps = num_steps
        self.register_buffer("gamma", gamma.float(), persistent=False)
        self.register_buffer("sigma", sigma.float(), persistent=False)
        self.register_buffer("lam", lam.float(), persistent=False)
        weights = torch.full((big_d,), float(residual_weight))
        weights[:d] = 1.0
        self.register_buffer("component_weights", weights, persistent=False)

    def grid(self, clip: torch.Tensor) -> Grid:
        _, _, t, h, w = clip.shape
        return t // self.t_patch, h // self.patch_size, w // self.patch_size

    # ------------------------------------------------------------------ the method, one step each
    def add_noise(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z_t = γ_t z_0 + σ_t ε; z0, eps [B, N, d], t [B]."""
        return self.gamma[t][:, None, None] * z0 + self.sigma[t][:, None, None] * eps

    def network_input(self, z_t: torch.Tensor, grid: Optional[Grid] = None) -> torch.Tensor:
        """[B, N, d] latent tokens, or the noisy image's patches [B, N, D] through the inverse PCA."""
        return z_t if self.input_space == "latent" else self.tokenizer.decode(z_t, grid)

    def forward_loss(self, pred: torch.Tensor, x0: torch.Tensor, z0: torch.Tensor, eps: torch.Tensor,
                     t: torch.Tensor, grid: Optional[Grid] = None) -> torch.Tensor:
        """λ_t-weighted mean squared error against the target of ``self.predict`` (module docstring)."""
        pred = pred.float()
        if self.predict == "image":  # r = V (x_0 - net): the residue in the full PCA basis, components weighted
            per_dim = self.tokenizer.full_coefficients(x0.float() - pred).pow(2) * self.component_weights
        else:
            target = eps if self.predict == "eps" else z0
            if self.output_space == "image":
                target = self.tokenizer.decode(target, grid)
            per_dim = (pred - target.float()).pow(2)
        return (self.lam[t] * per_dim.mean(dim=(1, 2))).mean()

    def forward(self, clip: torch.Tensor, label: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """clip [B, C, T, H, W] -> {"loss"}; ``label`` is used only by the class-conditional DiT (Table 1, line 1)."""
        # The tokenizer and the loss stay in float32 under mixed precision: PCA projections and the residue's
        # small components are what bf16 would round away.
        grid = self.grid(clip)
        with torch.autocast(clip.device.type, enabled=False):
            x0 = patchify(clip.float(), self.t_patch, self.patch_size)             # [B, N, D]
            z0 = self.tokenizer.encode(x0, grid)                                    # [B, N, d]
            t = torch.randint(0, self.num_steps, (clip.shape[0],), device=clip.device)
            eps = torch.randn_like(z0)
            inputs = self.network_input(self.add_noise(z0, t, eps), grid)
        cond = label if self.dit.num_classes else None
        pred = self.dit(inputs, t, grid, cond)                                      # [B, N, d or D]
        with torch.autocast(clip.device.type, enabled=False):
            return {"loss": self.forward_loss(pred, x0, z0, eps, t, grid)}

    # ------------------------------------------------------------------ probing and fine-tuning
    @torch.no_grad()
    def export_encoder(self, t: int) -> Dict[str, torch.Tensor]:
        """A plain VisionTransformer state dict (patch_embed + the first encoder_depth blocks, no final norm) that
        computes the DiT encoder at the fixed step ``t`` on the clean image (module docstring)."""
        if not 0 <= t < self.num_steps:
            raise ValueError(f"LDAE.PROBE_T = {t} is not a step of this model: expected 0 .. {self.num_steps - 1}")
        state = fold_encoder(self.dit.state_dict(), t, self.dit.encoder_depth)
        weight, bias = self.dit.embed.weight.float(), self.dit.embed.bias.float()   # [E, in_dim], [E]
        p, chans = self.patch_size, self.in_chans
        if self.input_space == "latent" and self.tokenizer.LINEAR:  # compose with the affine encode: z = x A^T + c
            a, c = affine_map(self.tokenizer)
            weight, bias = weight @ a, bias + weight @ c
        elif self.input_space == "latent":  # a conv VAE: kept as the ViT's frozen stem, the embedding reads its map
            p, chans = self.tokenizer.latent_patch, self.tokenizer.out_channels
            state.update({f"stem.{k}": v for k, v in self.tokenizer.state_dict().items()})
        e = weight.shape[0]
        state["patch_embed.proj.weight"] = weight.reshape(e, self.t_patch, p, p, chans).permute(0, 4, 1, 2, 3)
        state["patch_embed.proj.bias"] = bias
        return {k: v.contiguous() for k, v in state.items()}


def affine_map(tokenizer: PatchTokenizer):
    """(A [d, D], c [d]) with tokenizer.encode(x) = x A^T + c, for a linear tokenizer (PCA, patch AE / VAE, pixel)."""
    eye = torch.eye(tokenizer.D, device=next(iter(tokenizer.buffers()), torch.empty(0)).device)  # pixel: no buffers
    c = tokenizer.encode(torch.zeros(1, 1, tokenizer.D, device=eye.device))[0, 0]
    return (tokenizer.encode(eye[None])[0] - c).T, c


def check_ldae_choices(predict: str, input_space: str, output_space: str, tokenizer: PatchTokenizer) -> None:
    """The combinations the paper's lines use; anything else is refused naming the keys."""
    for key, value, allowed in (("LDAE.PREDICT", predict, PREDICTIONS), ("LDAE.INPUT_SPACE", input_space, SPACES),
                                ("LDAE.OUTPUT_SPACE", output_space, SPACES)):
        if value not in allowed:
            raise ValueError(f"{key} = {value!r}: expected one of {', '.join(allowed)}")
    problem = output_space_problem(predict, output_space)
    if problem:
        raise ValueError(problem)
    if predict == "image" and not hasattr(tokenizer, "full_coefficients"):
        raise ValueError(f"LDAE.PREDICT image weighs the residue in the tokenizer's full basis, which "
                         f"{type(tokenizer).__name__} does not have (use the PCA or pixel tokenizer)")


def output_space_problem(predict: str, output_space: str) -> str:
    """Why ``output_space`` cannot hold the ``predict`` target ("" when it can); config validation uses it too."""
    if predict == "eps" and output_space != "latent":
        return "LDAE.PREDICT eps needs LDAE.OUTPUT_SPACE latent (the noise lives in the latent space)"
    if predict == "image" and output_space != "image":
        return "LDAE.PREDICT image (the original image) needs LDAE.OUTPUT_SPACE image"
    return ""
