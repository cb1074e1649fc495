"""Spacetime patch embedding: one Conv3d with kernel = stride = (t_patch, p, p)."""
from typing import Tuple

import torch
from torch import nn


class PatchEmbed3d(nn.Module):
    """Clip [B, C, T, H, W] -> tokens [B, T'·H'·W', D], tokens in (t, h, w) row-major order.

    An image is a clip with T = 1 and ``t_patch = 1``.
    """

    def __init__(self, patch_size: int = 16, t_patch: int = 2, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size, self.t_patch = patch_size, t_patch
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(t_patch, patch_size, patch_size),
                              stride=(t_patch, patch_size, patch_size))

    def grid_size(self, clip_shape) -> Tuple[int, int, int]:
        """(T', H', W') for a clip of shape [..., T, H, W]; raises naming the size that does not divide."""
        t, h, w = clip_shape[-3:]
        for name, size, patch in (("frames", t, self.t_patch), ("height", h, self.patch_size),
                                  ("width", w, self.patch_size)):
            if size % patch:
                raise ValueError(f"clip {name} {size} is not divisible by its patch size {patch} "
                                 f"(clip shape {tuple(clip_shape)})")
        return t // self.t_patch, h // self.patch_size, w // self.patch_size

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dim() != 5:
            raise ValueError(f"expected a clip [B, C, T, H, W], got shape {tuple(clip.shape)}")
        self.grid_size(clip.shape)
        # Contiguous [B, N, D]: the transposed view would carry its strides through every residual add, and each
        # block's two LayerNorms would copy it, forward and backward (timm's ViT makes its tokens contiguous too).
        return self.proj(clip).flatten(2).transpose(1, 2).contiguous()
