"""MAE baseline (He et al. 2022; spacetime version of Feichtenhofer et al. 2022) at DiffMAE's dimensions.

    mask -> encode the visible tokens -> decoder over [visible, mask tokens] -> predict the FULL
    t_patch·p·p·C patch of every token -> MSE on the masked tokens (per-patch normalised targets by default)

Same encoder as ``DiffMAE`` (parameter names ``encoder.*``), same patch layout (``patchify.py``), same
decoder width / depth / heads, so the two differ only in what the decoder sees and predicts.
"""
from typing import Dict, Optional

import torch
from timm.models.vision_transformer import Block
from torch import nn

from videodiff.models.act_checkpoint import run_block
from videodiff.models.masking import Grid, Mask, check_mask_kind, merge_tokens
from videodiff.models.patchify import patch_normalize, patchify
from videodiff.models.masked_tokens import MaskedTokensMixin
from videodiff.models.pos_embed import SinCosCache
from videodiff.models.vit import VisionTransformer, init_vit_weights


class MAE(MaskedTokensMixin, nn.Module):
    """ViT encoder on visible tokens + MAE decoder reconstructing full spacetime patches."""

    def __init__(self, patch_size: int = 16, t_patch: int = 2, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, decoder_depth: int = 8, decoder_embed_dim: int = 512,
                 decoder_num_heads: int = 16, mask_type: str = "random", mask_ratio: float = 0.9,
                 norm_pix_loss: bool = True, act_checkpoint: bool = False):
        super().__init__()
        check_mask_kind(mask_type)
        self.patch_size, self.t_patch = patch_size, t_patch
        self.decoder_embed_dim, self.act_checkpoint = decoder_embed_dim, act_checkpoint
        self.mask_type, self.mask_ratio, self.norm_pix_loss = mask_type, mask_ratio, norm_pix_loss

        self.encoder = VisionTransformer(patch_size, t_patch, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                         qkv_bias=qkv_bias, drop_path_rate=drop_path_rate, final_norm=True,
                                         act_checkpoint=act_checkpoint)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=nn.LayerNorm)
            for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, t_patch * patch_size * patch_size * in_chans)
        self._sincos = SinCosCache(decoder_embed_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE: xavier-uniform linears, unit LayerNorms, mask token ~ N(0, 0.02²). The encoder did its own."""
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_vit_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(self, clip: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Visible tokens -> normed encoder output -> decoder width: [B, K, Dd]."""
        return self.decoder_embed(self.encoder.forward_features(clip, ids_keep))

    def forward_decoder(self, latent: torch.Tensor, mask: Mask, grid: Grid) -> torch.Tensor:
        """[B, K, Dd] -> full-patch prediction of every token [B, N, t_patch·p·p·C]."""
        b, m = latent.shape[0], mask.ids_masked.shape[1]
        mask_tokens = self.mask_token.to(latent.dtype).expand(b, m, -1)           # [B, M, Dd]
        x = merge_tokens(latent, mask_tokens, mask.ids_keep, mask.ids_masked)      # [B, N, Dd], token order
        x = x + self._sincos(grid, x.device, x.dtype)                              # decoder-width positions
        for block in self.decoder_blocks:
            x = run_block(block, x, act_checkpoint=self.act_checkpoint)
        return self.decoder_pred(self.decoder_norm(x))                              # [B, N, t·p·p·C]

    def targets(self, clip: torch.Tensor) -> torch.Tensor:
        """Full spacetime patches [B, N, t_patch·p·p·C], per-patch normalised when norm_pix_loss."""
        patches = patchify(clip, self.t_patch, self.patch_size)
        return patch_normalize(patches)[0] if self.norm_pix_loss else patches

    def forward_loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token MSE [B, N] averaged over masked tokens only (mask [B, N] bool, True = masked)."""
        per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)
        weight = mask.to(per_token.dtype)
        return (per_token * weight).sum() / weight.sum()

    def forward(self, clip: torch.Tensor, label: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """clip [B, C, T, H, W] -> {"loss"}; ``label`` is ignored (self-supervised)."""
        mask = self.mask(clip)
        pred = self.forward_decoder(self.forward_encoder(clip, mask.ids_keep), mask, self.grid(clip))
        return {"loss": self.forward_loss(pred, self.targets(clip), mask.mask)}
