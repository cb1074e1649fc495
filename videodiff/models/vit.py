"""A Vision Transformer over clips: spacetime patch embedding, fixed sin-cos positions, pre-norm blocks.

Blocks are timm's (``timm.models.vision_transformer.Block``: pre-norm attention on
``scaled_dot_product_attention`` + MLP), so parameter names match MAE / timm checkpoints.
"""
from typing import List, Optional, Tuple

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from videodiff.models.patch_embed import PatchEmbed3d
from videodiff.models.pos_embed import sincos_3d


class VisionTransformer(nn.Module):
    """Encoder: clip [B, C, T, H, W] -> tokens [B, N, D] (N = T'·H'·W', or the kept subset)."""

    def __init__(self, patch_size: int = 16, t_patch: int = 2, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, final_norm: bool = True):
        super().__init__()
        self.embed_dim, self.depth = embed_dim, depth
        self.patch_embed = PatchEmbed3d(patch_size, t_patch, in_chans, embed_dim)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=rate,
                  norm_layer=nn.LayerNorm) for rate in rates
        ])
        # Fine-tuning pools first and normalises after (the head's LayerNorm), so it builds with final_norm=False.
        self.norm = nn.LayerNorm(embed_dim) if final_norm else nn.Identity()
        self._pos_cache: dict = {}
        self.apply(init_vit_weights)
        init_patch_embed(self.patch_embed)

    def pos_embed(self, grid: Tuple[int, int, int], device, dtype) -> torch.Tensor:
        """[1, N, D] fixed embeddings for this grid, built once per (grid, device, dtype)."""
        key = (grid, device, dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_3d(self.embed_dim, grid).to(device=device, dtype=dtype)[None]
        return self._pos_cache[key]

    def embed(self, clip: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
        """Patch-embed and add positions: -> (tokens [B, N, D], grid (T', H', W'))."""
        grid = self.patch_embed.grid_size(clip.shape)
        x = self.patch_embed(clip)
        return x + self.pos_embed(grid, x.device, x.dtype), grid

    def forward_features(self, clip: torch.Tensor, ids_keep: Optional[torch.Tensor] = None,
                         return_block_outputs: bool = False):
        """Encode ``clip``; with ``ids_keep`` [B, K] only those tokens enter the blocks (MAE-style).

        Returns normalised tokens [B, K or N, D]; with ``return_block_outputs`` also the list of every
        block's output (for decoders that read encoder blocks top-down).
        """
        x, _ = self.embed(clip)
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        outputs: List[torch.Tensor] = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        x = self.norm(x)
        return (x, outputs) if return_block_outputs else x

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.forward_features(clip)

    def group_matcher(self, coarse: bool = False):
        """Layer ids for timm's layer-wise lr decay: embeddings = 0, block i = i + 1, final norm = last."""
        return {"stem": r"^patch_embed", "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def no_weight_decay(self):
        return set()


def init_vit_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_patch_embed(patch_embed: PatchEmbed3d) -> None:
    """Treat the Conv3d as the linear layer it is (xavier over its flattened kernel), as MAE does."""
    weight = patch_embed.proj.weight
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    nn.init.zeros_(patch_embed.proj.bias)


def init_head_linear(linear: nn.Linear, std: float) -> None:
    trunc_normal_(linear.weight, std=std)
    nn.init.zeros_(linear.bias)
