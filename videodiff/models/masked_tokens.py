"""What DiffMAE and MAE share around their encoder: the clip's token grid, a mask on it, decoder positions."""
from typing import Optional

import torch

from videodiff.models.masking import Grid, Mask, build_mask


class MaskedTokensMixin:
    """Needs ``self.encoder`` (a VisionTransformer), ``self.mask_type``, ``self.mask_ratio`` and ``self._sincos``
    (a ``SinCosCache`` at the decoder width)."""

    def grid(self, clip: torch.Tensor) -> Grid:
        """(T', H', W') of ``clip`` [B, C, T, H, W]."""
        return self.encoder.patch_embed.grid_size(clip.shape)

    def decoder_pos_embed(self, grid: Grid, device, dtype) -> torch.Tensor:
        """[1, N, Dd] sin-cos positions at the decoder width, cached per (grid, device, dtype)."""
        return self._sincos(grid, device, dtype)

    def mask(self, clip: torch.Tensor, generator: Optional[torch.Generator] = None) -> Mask:
        """A Mask over the clip's token grid, on its device (ids [B, K] / [B, M], mask [B, N])."""
        return build_mask(self.mask_type, clip.shape[0], self.grid(clip), self.mask_ratio, clip.device, generator)
