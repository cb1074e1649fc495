"""Token masking on the spacetime grid (T', H', W') of a video ViT; an image has T' = 1.

Conventions
-----------
* Token order is the flattened (t, h, w) grid in row-major order: ``index = (t·H' + h)·W' + w``,
  the order a ``Conv3d`` patch embedding produces with ``.flatten(2).transpose(1, 2)``.
* Every masking function returns a :class:`Mask` ``(ids_keep [B, N_keep], ids_masked [B, N_mask],
  mask [B, N] bool, True = masked)``. ``ids_keep`` and ``ids_masked`` are each sorted ascending, so
  visible tokens keep their spacetime order, and together they are a permutation of ``range(N)``.
  Every sample of a batch has the same N_keep, so the index tensors are rectangular.
* "round" below is round-half-up, ``floor(x + 0.5)`` (not Python's round-half-to-even).
* Random masks are drawn with ``torch.rand(..., generator=generator, device=device)``: a given
  generator must live on ``device``; the same seed gives the same masks.
"""

import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch

Grid = Tuple[int, int, int]
Device = Union[str, torch.device]


class Mask(NamedTuple):
    ids_keep: torch.Tensor    # [B, N_keep] long, ascending: visible tokens
    ids_masked: torch.Tensor  # [B, N_mask] long, ascending: masked tokens
    mask: torch.Tensor        # [B, N] bool, True = masked


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _check_args(batch: int, grid: Sequence[int], ratio: float) -> Grid:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    grid = tuple(grid)
    if len(grid) != 3 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
        raise ValueError(f"grid must be three positive integers (T', H', W'), got {grid!r}")
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio < 1.0):
        raise ValueError(f"mask ratio must lie strictly between 0 and 1, got {ratio!r}")
    return grid


def num_visible(num_tokens: int, ratio: float) -> int:
    """N_keep = round_half_up((1 - ratio)·N), clamped to [1, N - 1] (>= 1 visible, >= 1 masked)."""
    if num_tokens < 2:
        raise ValueError(f"need at least 2 tokens to keep one and mask one, got {num_tokens}")
    return min(max(_round_half_up((1.0 - ratio) * num_tokens), 1), num_tokens - 1)


def _mask_from_keep(ids_keep: torch.Tensor, num_tokens: int) -> Mask:
    """Build the full Mask from sorted ids_keep [B, K]."""
    batch = ids_keep.shape[0]
    mask = torch.ones(batch, num_tokens, dtype=torch.bool, device=ids_keep.device)
    mask.scatter_(1, ids_keep, False)
    # stable sort of the bool mask lists visible (False) then masked (True), each ascending
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
    return Mask(ids_keep, order[:, ids_keep.shape[1]:], mask)


def _random_keep(batch: int, num_tokens: int, num_keep: int, device: Device,
                 generator: Optional[torch.Generator]) -> torch.Tensor:
    """MAE-style: argsort uniform noise per sample, keep the lowest num_keep; sorted ascending [B, K]."""
    noise = torch.rand(batch, num_tokens, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    return ids_shuffle[:, :num_keep].sort(dim=1).values


def random_masking(batch: int, grid: Sequence[int], ratio: float, device: Device = "cpu",
                   generator: Optional[torch.Generator] = None) -> Mask:
    """Mask ``ratio`` of all T'·H'·W' tokens uniformly at random, independently per sample.

    N_keep = round_half_up((1 - ratio)·N) clamped to [1, N - 1], e.g. 157 of 8·14·14 = 1568 at
    ratio 0.9, 49 of 196 at ratio 0.75.
    """
    t, h, w = _check_args(batch, grid, ratio)
    n = t * h * w
    ids_keep = _random_keep(batch, n, num_visible(n, ratio), device, generator)
    return _mask_from_keep(ids_keep, n)


def tube_masking(batch: int, grid: Sequence[int], ratio: float, device: Device = "cpu",
                 generator: Optional[torch.Generator] = None) -> Mask:
    """One random spatial mask per sample, repeated at every temporal position (VideoMAE "tube").

    N_keep = T'·round_half_up((1 - ratio)·H'·W') with the spatial count clamped to [1, H'W' - 1].
    """
    t, h, w = _check_args(batch, grid, ratio)
    hw = h * w
    spatial_keep = _random_keep(batch, hw, num_visible(hw, ratio), device, generator)  # [B, Ks]
    offsets = torch.arange(t, device=spatial_keep.device).mul_(hw).view(1, t, 1)
    ids_keep = (offsets + spatial_keep.unsqueeze(1)).flatten(1)  # t-major, so already ascending
    return _mask_from_keep(ids_keep, t * hw)


def center_block_size(grid: Sequence[int], ratio: float) -> Tuple[int, int]:
    """Side lengths (bh, bw) of the centred masked block: round_half_up(√ratio · side), clamped to [1, side]."""
    _, h, w = grid
    return tuple(min(max(_round_half_up(math.sqrt(ratio) * side), 1), side) for side in (h, w))


def center_masking(batch: int, grid: Sequence[int], ratio: float, device: Device = "cpu",
                   generator: Optional[torch.Generator] = None) -> Mask:
    """Mask a centred bh×bw block at every temporal position, the same for every sample.

    Block side per spatial dim = round_half_up(√ratio · side) (``center_block_size``), so the masked
    fraction is bh·bw / (H'·W') ≈ ratio, not exactly ratio. The block starts at (side - b) // 2,
    i.e. it sits half a token towards the top-left when side - b is odd. Example: grid (1, 16, 16),
    ratio 0.25 → the 8×8 block of rows/cols 4..11 (the centre 128² of a 256² image, 16 px patches).
    ``generator`` is accepted for a uniform signature and unused.
    """
    t, h, w = _check_args(batch, grid, ratio)
    bh, bw = center_block_size(grid, ratio)
    if bh == h and bw == w:
        raise ValueError(f"center mask ratio {ratio!r} covers the whole {h}x{w} grid: no visible token")
    top, left = (h - bh) // 2, (w - bw) // 2
    spatial = torch.zeros(h, w, dtype=torch.bool, device=device)
    spatial[top:top + bh, left:left + bw] = True
    mask = spatial.flatten().repeat(t).unsqueeze(0).expand(batch, -1).contiguous()
    ids = torch.arange(t * h * w, device=device)
    return Mask(ids[~mask[0]].expand(batch, -1).contiguous(), ids[mask[0]].expand(batch, -1).contiguous(), mask)


_BUILDERS = {"random": random_masking, "tube": tube_masking, "center": center_masking}
MASK_KINDS = tuple(_BUILDERS)  # the one list of MASK.TYPE values (config validation imports it)


def check_mask_kind(kind: str) -> None:
    """Raise naming an unknown mask kind (models check at construction, not at the first step)."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask type {kind!r}; expected one of {', '.join(MASK_KINDS)}")


def build_mask(kind: str, batch: int, grid: Sequence[int], ratio: float, device: Device = "cpu",
               generator: Optional[torch.Generator] = None) -> Mask:
    """Dispatch on ``kind`` ("random" / "tube" / "center"), the config key ``MASK.TYPE``."""
    check_mask_kind(kind)
    return _BUILDERS[kind](batch, grid, ratio, device=device, generator=generator)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x [B, N, *D], ids [B, K] long → x[b, ids[b]] as [B, K, *D]."""
    if ids.dim() != 2 or ids.shape[0] != x.shape[0]:
        raise ValueError(f"ids must be [B, K] with B = {x.shape[0]}, got {tuple(ids.shape)}")
    index = ids.reshape(*ids.shape, *([1] * (x.dim() - 2))).expand(*ids.shape, *x.shape[2:])
    return torch.gather(x, 1, index)


def merge_tokens(x_keep: torch.Tensor, x_masked: torch.Tensor, ids_keep: torch.Tensor,
                 ids_masked: torch.Tensor) -> torch.Tensor:
    """Inverse of two ``gather_tokens`` calls: put [B, N_keep, *D] and [B, N_mask, *D] back in token order [B, N, *D]."""
    x = torch.cat([x_keep, x_masked], dim=1)
    ids = torch.cat([ids_keep, ids_masked], dim=1)
    out = torch.empty_like(x)
    index = ids.reshape(*ids.shape, *([1] * (x.dim() - 2))).expand(*ids.shape, *x.shape[2:])
    return out.scatter_(1, index, x)
