"""Fixed sin-cos position embeddings on the (T', H', W') token grid.

The channel dimension is split between time (a quarter) and the two spatial axes (the rest, halved),
so the same formula serves images (T' = 1) and any clip length or resolution: embeddings are
regenerated for whatever grid the input has, never stored in checkpoints.
"""
from typing import Tuple

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """positions [N] -> [N, dim] as in "Attention is all you need" (dim must be even)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def split_dims(dim: int) -> Tuple[int, int]:
    """(temporal, per-spatial-axis) channel counts; both even, summing to dim."""
    if dim % 8:
        raise ValueError(f"3-D sin-cos position embedding needs a width divisible by 8, got {dim}")
    dim_t = dim // 4
    return dim_t, (dim - dim_t) // 2


def sincos_3d(dim: int, grid: Tuple[int, int, int]) -> torch.Tensor:
    """grid (T', H', W') -> [T'·H'·W', dim] in (t, h, w) row-major token order."""
    t, h, w = grid
    dim_t, dim_s = split_dims(dim)
    emb_t = sincos_1d(dim_t, torch.arange(t))[:, None, None].expand(t, h, w, dim_t)
    emb_h = sincos_1d(dim_s, torch.arange(h))[None, :, None].expand(t, h, w, dim_s)
    emb_w = sincos_1d(dim_s, torch.arange(w))[None, None, :].expand(t, h, w, dim_s)
    return torch.cat([emb_t, emb_h, emb_w], dim=-1).reshape(t * h * w, dim)


class SinCosCache:
    """``cache(grid, device, dtype)`` -> [1, N, dim] fixed embeddings, built once per (grid, device, dtype).

    Not a buffer: the table depends on the input's grid, so it is never stored in checkpoints.
    """

    def __init__(self, dim: int):
        split_dims(dim)  # fail at construction, not at the first forward
        self.dim = dim
        self._tables: dict = {}

    def __call__(self, grid: Tuple[int, int, int], device, dtype) -> torch.Tensor:
        key = (tuple(grid), device, dtype)
        if key not in self._tables:
            self._tables[key] = sincos_3d(self.dim, grid).to(device=device, dtype=dtype)[None]
        return self._tables[key]
