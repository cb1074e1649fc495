"""DiffMAE: masked autoencoding where the decoder is a diffusion model of the masked patches.

Read top to bottom, the training step is the paper:

    mask -> encode the visible tokens -> take the clean target slice of each masked token
         -> noise it (q_sample at a uniform t) -> decode, conditioned on t and the encoder -> MSE on x_0

Conventions (see also ``patchify.py``, ``decoder.py``, ``diffusion.py``):

* Target. For each spacetime token, the single frame ``target_slice`` of its t_patch·p·p patch,
  [p·p·C] values in (dy, dx, c) order (DiffMAE supplement A.2). For images (t_patch = 1) it is the patch.
* Inputs. The encoder embeds clean patches with its own Conv3d; the decoder embeds the noisy slices
  with its own Linear (``decoder.noisy_embed``) and adds sin-cos positions of the token's grid cell (decoder
  width) and ``TimestepEmbedder(t)``.
* Decoder. One module per variant (``decoder.py``: joint, cross, cross_self), each owning how it reads the
  encoder: ``decoder.reads`` lists the encoder blocks it needs; ``forward_encoder`` asks the encoder for exactly
  those, each through the encoder's final LayerNorm (``VisionTransformer.block_features``), and the decoder
  projects them to its width, adds positions and the step embedding, and predicts x_0.
* norm_pix_loss. When on, targets are normalised per patch (its own mean / std) and the noise is
  added in that normalised space. At generation time the statistics of masked patches are unknown,
  so ``generate`` then returns -- and pastes -- *normalised* patches (``result["normalized"]``). The
  default is off for DiffMAE, so generation yields pixels in the clip's (mean/std normalised) space.
* Timesteps: integer t in [0, num_steps), t = 0 least noisy (``diffusion.py``).
* CLIP-aided (optional, ``clip_target``): a ``CLIPTarget`` (``clip_target.py``) adds a loss on the decoder's
  normed output of the masked tokens; ``forward`` then also reports ``loss_pixel`` and ``loss_clip``. Without it
  (the default) the model, its state dict and its outputs are exactly the pixel-only DiffMAE.
"""
from typing import Dict, Iterable, Optional, Union

import torch
from torch import nn

from videodiff.models.decoder import DecoderOutput, build_decoder
from videodiff.models.diffusion import GaussianDiffusion
from videodiff.models.masking import Grid, Mask, check_mask_kind, gather_tokens, merge_tokens
from videodiff.models.patchify import patch_normalize, patchify, time_slice, unpatchify
from videodiff.models.masked_tokens import MaskedTokensMixin
from videodiff.models.vit import VisionTransformer

# {encoder block: its normed output [B, K, D]}, the blocks the decoder reads
EncoderFeatures = Dict[int, torch.Tensor]


class DiffMAE(MaskedTokensMixin, nn.Module):
    """ViT encoder on visible tokens + a diffusion decoder predicting x_0 of the masked tokens' target slice."""

    def __init__(self, patch_size: int = 16, t_patch: int = 2, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, decoder_type: str = "cross_self", decoder_depth: int = 8,
                 decoder_embed_dim: int = 512, decoder_num_heads: int = 16, mask_type: str = "random",
                 mask_ratio: float = 0.9, target_slice: int = 0, norm_pix_loss: bool = False,
                 num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, rho: float = 0.8,
                 schedule: str = "linear", clip_target: Optional[nn.Module] = None, act_checkpoint: bool = False):
        super().__init__()
        check_mask_kind(mask_type)
        if not 0 <= target_slice < t_patch:
            raise ValueError(f"target_slice {target_slice} must lie in [0, t_patch = {t_patch})")
        self.patch_size, self.t_patch, self.in_chans = patch_size, t_patch, in_chans
        self.slice_dim = patch_size * patch_size * in_chans
        self.mask_type, self.mask_ratio = mask_type, mask_ratio
        self.target_slice, self.norm_pix_loss = target_slice, norm_pix_loss
        with torch.device("cpu"):  # schedule arrays live on the CPU in float64, also when built under a meta device
            self.diffusion = GaussianDiffusion(num_steps, beta_start, beta_end, rho, schedule)

        self.encoder = VisionTransformer(patch_size, t_patch, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                         qkv_bias=qkv_bias, drop_path_rate=drop_path_rate, final_norm=True,
                                         act_checkpoint=act_checkpoint)
        self.decoder = build_decoder(decoder_type, encoder_dim=embed_dim, encoder_depth=depth,
                                     slice_dim=self.slice_dim, dim=decoder_embed_dim, depth=decoder_depth,
                                     num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                     act_checkpoint=act_checkpoint)
        self.clip_target = clip_target  # initialised by itself; None = pixel-only DiffMAE

    # ------------------------------------------------------------------ the method, one step each
    def forward_encoder(self, clip: torch.Tensor, ids_keep: torch.Tensor) -> EncoderFeatures:
        """Visible tokens only -> the normed outputs of the encoder blocks the decoder reads, {block: [B, K, D]}."""
        return self.encoder.block_features(clip, ids_keep, self.decoder.reads)

    def targets(self, clip: torch.Tensor) -> torch.Tensor:
        """Clean x_0 of every token: frame ``target_slice`` of its patch, [B, N, p·p·C] (per-patch normed if norm_pix)."""
        patches = patchify(clip, self.t_patch, self.patch_size)                    # [B, N, t·p·p·C]
        x0 = time_slice(patches, self.t_patch, self.patch_size, self.in_chans, self.target_slice)
        return patch_normalize(x0)[0] if self.norm_pix_loss else x0

    def forward_decoder(self, features: EncoderFeatures, x_t: torch.Tensor, t: torch.Tensor, mask: Mask,
                        grid: Grid) -> DecoderOutput:
        """Noisy slices x_t [B, M, p·p·C] of the masked tokens at steps t [B] -> DecoderOutput(pred, hidden)."""
        return self.decoder(x_t, t, features, mask, grid)

    def forward_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE between x_0 prediction and target, both [B, M, p·p·C] of masked tokens only."""
        return (pred.float() - target.float()).pow(2).mean()

    def forward(self, clip: torch.Tensor, label: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """clip [B, C, T, H, W] -> {"loss"}; ``label`` is ignored (self-supervised)."""
        mask, grid = self.mask(clip), self.grid(clip)
        features = self.forward_encoder(clip, mask.ids_keep)
        x0 = gather_tokens(self.targets(clip), mask.ids_masked)                    # [B, M, p·p·C]
        t = self.diffusion.sample_timesteps(clip.shape[0], device=clip.device)     # [B], uniform
        x_t = self.diffusion.q_sample(x0, t)
        out = self.forward_decoder(features, x_t, t, mask, grid)
        loss = self.forward_loss(out.pred, x0)
        if self.clip_target is None:
            return {"loss": loss}
        loss_clip = self.clip_target.loss(out.hidden, clip, mask.ids_masked, grid)
        return {"loss": loss + self.clip_target.weight * loss_clip, "loss_pixel": loss.detach(),
                "loss_clip": loss_clip.detach()}

    # ------------------------------------------------------------------ generation and evaluation
    @torch.no_grad()
    def generate(self, clip: torch.Tensor, mask: Optional[Mask] = None, num_sample_steps: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, return_intermediates_at: Iterable[int] = ()) -> dict:
        """Inpaint the masked tokens by the reverse process; the encoder runs once.

        Returns a dict:
          ``x0``             [B, M, p·p·C]  generated target slices of the masked tokens (order of ids_masked)
          ``intermediates``  {t: x_t [B, M, p·p·C]} as fed to the decoder at the chain steps nearest the
                             requested t (see ``GaussianDiffusion.sample_loop``); empty if none requested
          ``mask``           the Mask used (drawn with ``generator`` when not given)
          ``clip``           [B, C, T, H, W] = ``self.paste(clip, x0, mask)``
          ``normalized``     True when the slices are per-patch normalised (norm_pix_loss), not pixels
        Call ``self.eval()`` first if the model has dropout / drop path.
        """
        mask = self.mask(clip, generator) if mask is None else mask
        grid = self.grid(clip)
        features = self.forward_encoder(clip, mask.ids_keep)

        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.forward_decoder(features, x_t, t, mask, grid).pred

        shape = (clip.shape[0], mask.ids_masked.shape[1], self.slice_dim)
        record = self.diffusion.chain_steps_nearest(return_intermediates_at, num_sample_steps)
        intermediates: Dict[int, torch.Tensor] = {}
        for step in self.diffusion.sample_loop_progressive(denoise, shape, num_sample_steps, generator,
                                                           device=clip.device, dtype=clip.dtype):
            if step.t in record:
                intermediates[step.t] = step.x_t
        x0 = step.x_next
        return {"x0": x0, "intermediates": intermediates, "mask": mask, "clip": self.paste(clip, x0, mask),
                "normalized": self.norm_pix_loss}

    def paste(self, clip: torch.Tensor, slices: torch.Tensor, mask: Mask) -> torch.Tensor:
        """Clip [B, C, T, H, W] with masked tokens replaced by ``slices`` [B, M, p·p·C]; visible tokens untouched.

        The model predicts one frame per t_patch·p·p patch; *every* frame of a masked patch (the target
        frame and the t_patch - 1 others) is filled with that predicted slice, i.e. it is held for t_patch frames.
        """
        patches = patchify(clip, self.t_patch, self.patch_size)                    # [B, N, t·p·p·C]
        filled = slices.to(patches.dtype).repeat(1, 1, self.t_patch)               # frame-major layout
        patches = merge_tokens(gather_tokens(patches, mask.ids_keep), filled, mask.ids_keep, mask.ids_masked)
        return unpatchify(patches, self.t_patch, self.patch_size, self.grid(clip))

    @torch.no_grad()
    def one_step_x0(self, clip: torch.Tensor, mask: Mask, t: Union[int, torch.Tensor],
                    generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """Noise the masked targets to step t once and predict x_0 in one decoder call.

        Returns ``pred`` and ``target`` [B, M, p·p·C] and ``mse`` (0-d), the "one-step x_0 prediction" error.
        """
        if not torch.is_tensor(t):
            t = torch.full((clip.shape[0],), int(t), dtype=torch.long, device=clip.device)
        features = self.forward_encoder(clip, mask.ids_keep)
        x0 = gather_tokens(self.targets(clip), mask.ids_masked)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.diffusion.q_sample(x0, t, noise)
        pred = self.forward_decoder(features, x_t, t, mask, self.grid(clip)).pred
        return {"pred": pred, "target": x0, "mse": self.forward_loss(pred, x0)}

