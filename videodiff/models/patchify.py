"""Clips <-> flat spacetime patches, single time slices of a patch, per-patch normalisation.

Layout
------
Tokens come in (t, h, w) row-major order, ``index = (t·H' + h)·W' + w`` -- the order of the
``Conv3d`` patch embedding and of ``masking.py``. Inside a token, the t_patch·p·p·C values are laid
out as ``(dt, dy, dx, c)`` with the channel fastest (MAE's ``(p, q, c)`` with a leading frame axis):

    patches[b, n, ((dt·p + dy)·p + dx)·C + c] = clip[b, c, t·t_patch + dt, h·p + dy, w·p + dx]

So frame ``dt`` of every patch is the contiguous block ``[dt·p·p·C, (dt + 1)·p·p·C)``, and an image
(T = t_patch = 1) gives exactly MAE's ``patchify``.
"""
from typing import Tuple

import torch

Grid = Tuple[int, int, int]


def _grid(clip_shape, t_patch: int, p: int) -> Grid:
    t, h, w = clip_shape[-3:]
    if t % t_patch or h % p or w % p:
        raise ValueError(f"clip of shape {tuple(clip_shape)} does not divide into {t_patch}x{p}x{p} patches")
    return t // t_patch, h // p, w // p


def patchify(clip: torch.Tensor, t_patch: int, p: int) -> torch.Tensor:
    """clip [B, C, T, H, W] -> patches [B, N, t_patch·p·p·C], N = T'·H'·W' (layout in the module docstring)."""
    b, c = clip.shape[:2]
    t, h, w = _grid(clip.shape, t_patch, p)
    x = clip.reshape(b, c, t, t_patch, h, p, w, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)                  # [B, T', H', W', dt, dy, dx, C]
    return x.reshape(b, t * h * w, t_patch * p * p * c)


def unpatchify(patches: torch.Tensor, t_patch: int, p: int, grid: Grid) -> torch.Tensor:
    """patches [B, N, t_patch·p·p·C] -> clip [B, C, T'·t_patch, H'·p, W'·p]; the inverse of ``patchify``."""
    b, n, d = patches.shape
    t, h, w = grid
    if n != t * h * w or d % (t_patch * p * p):
        raise ValueError(f"patches {tuple(patches.shape)} do not fit grid {tuple(grid)} with "
                         f"{t_patch}x{p}x{p} patches")
    c = d // (t_patch * p * p)
    x = patches.reshape(b, t, h, w, t_patch, p, p, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)                  # [B, C, T', dt, H', dy, W', dx]
    return x.reshape(b, c, t * t_patch, h * p, w * p)


def time_slice(patches: torch.Tensor, t_patch: int, p: int, in_chans: int, index: int) -> torch.Tensor:
    """Frame ``index`` (0 <= index < t_patch) of every spacetime patch: [B, N, t_patch·p·p·C] -> [B, N, p·p·C].

    For images (t_patch = 1) this is the whole patch.
    """
    if not 0 <= index < t_patch:
        raise ValueError(f"time slice index {index} is outside [0, {t_patch})")
    b, n, _ = patches.shape
    return patches.reshape(b, n, t_patch, p * p * in_chans)[:, :, index]


def patch_normalize(x: torch.Tensor, eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise each patch over its last dim (MAE's norm_pix_loss): -> (normed, mean, std), stats [..., 1].

    Uses the unbiased variance, as MAE does; ``std = sqrt(var + eps)``, so ``normed · std + mean == x``.
    """
    mean = x.mean(dim=-1, keepdim=True)
    std = (x.var(dim=-1, keepdim=True) + eps).sqrt()
    return (x - mean) / std, mean, std
