"""What DiffMAE and MAE share around their encoder: the clip's token grid and a mask on it."""
from typing import Optional

import torch

from videodiff.models.masking import Grid, Mask, build_mask


class MaskedTokensMixin:
    """Needs ``self.encoder`` (a VisionTransformer), ``self.mask_type`` and ``self.mask_ratio``."""

    def grid(self, clip: torch.Tensor) -> Grid:
        """(T', H', W') of ``clip`` [B, C, T, H, W]."""
        return self.encoder.patch_embed.grid_size(clip.shape)

    def mask(self, clip: torch.Tensor, generator: Optional[torch.Generator] = None) -> Mask:
        """A Mask over the clip's token grid, on its device (ids [B, K] / [B, M], mask [B, N])."""
        return build_mask(self.mask_type, clip.shape[0], self.grid(clip), self.mask_ratio, clip.device, generator)
