"""l-DAE figures (paper Figs. 6-8): pure functions from a model and clips to RGB arrays, written as PNGs.

* ``noise_figure`` (Fig. 6): per image, ``clean | pixel noise σ | latent noise σ`` for each σ: the same Gaussian σ
  added to the (normalised) pixels, or to the tokenizer's latent and mapped back by its decoder (inverse PCA).
* ``denoising_figure`` (Fig. 7): per image and step t, ``clean | noisy input | denoised``: what the network reads at
  t (its input, shown as an image through the inverse PCA when it works in the latent space) and its estimate of the
  clean image (the prediction itself for image output; decode(z0) or decode of the z0 implied by an ε prediction).
* ``filter_figure`` (Fig. 8): the tokenizer's first directions (rows of V: PCA basis, patch AE / VAE encoder),
  each as a p x p x 3 image scaled to its own range; a spacetime direction shows its t_patch frames side by side,
  a per-frame tokenizer (``per_frame.py``) its single-frame basis.
* ``video_rows`` (clips, T > 1): per clip, rows ``original``, then ``noisy`` / ``denoised`` for each step t, the
  frames at temporal stride 2 (as DiffMAE's video figures), written as ``ldae_video_{i:03d}.png`` and as an MP4 (or
  GIF) whose frame j stacks the rows' j-th frames (``visualize.write_frame_rows``). The noise is the latent noise,
  shown through the inverse PCA, as in the denoising figure.

For clips the noise and denoising figures show the first frame. Un-normalised with DATA.MEAN / STD
(``visualize.to_uint8``) and tiled with white gaps (``visualize.tile``).
"""
import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from videodiff.data.encoding import write_image
from videodiff.models.ldae import LDAE
from videodiff.models.patchify import patchify, unpatchify
from videodiff.visualize import tile, to_uint8, write_frame_rows


def _first_frame(clip: torch.Tensor, mean, std) -> np.ndarray:
    """[C, T, H, W] normalised -> [H, W, 3] uint8 of its first frame."""
    return to_uint8(clip, mean, std)[0]


def _frames(model: LDAE, patches: torch.Tensor, clip: torch.Tensor, mean, std) -> np.ndarray:
    """Flat patches [1, N, D] of ``clip``'s grid -> its frames as uint8 [T, H, W, 3]."""
    return to_uint8(unpatchify(patches, model.t_patch, model.patch_size, model.grid(clip[None]))[0], mean, std)


def _image(model: LDAE, patches: torch.Tensor, clip: torch.Tensor, mean, std) -> np.ndarray:
    """Flat patches [1, N, D] of ``clip``'s grid -> its first frame as uint8."""
    return _frames(model, patches, clip, mean, std)[0]


@torch.no_grad()
def noise_figure(model: LDAE, clips: torch.Tensor, sigmas: Sequence[float], mean, std,
                 generator: torch.Generator) -> np.ndarray:
    """Fig. 6 for clips [B, C, T, H, W]: one row per clip, ``clean`` then (pixel, latent) noise per σ."""
    rows: List[List[np.ndarray]] = []
    for clip in clips:
        x0 = patchify(clip[None], model.t_patch, model.patch_size)                   # [1, N, D]
        grid = model.grid(clip[None])
        z0 = model.tokenizer.encode(x0, grid)
        row = [_first_frame(clip, mean, std)]
        for sigma in sigmas:
            pixel = x0 + sigma * torch.randn(x0.shape, generator=generator)
            latent = model.tokenizer.decode(z0 + sigma * torch.randn(z0.shape, generator=generator), grid)
            row += [_image(model, pixel, clip, mean, std), _image(model, latent, clip, mean, std)]
        rows.append(row)
    return tile(rows)


@torch.no_grad()
def denoise(model: LDAE, clip: torch.Tensor, t: int, generator: torch.Generator):
    """(network input as image patches, estimate of the clean image's patches), each [1, N, D], at step t."""
    x0 = patchify(clip[None], model.t_patch, model.patch_size)
    grid = model.grid(clip[None])
    z0 = model.tokenizer.encode(x0, grid)
    steps = torch.tensor([t])
    eps = torch.randn(z0.shape, generator=generator)
    z_t = model.add_noise(z0, steps, eps)
    inputs = model.network_input(z_t, grid)
    pred = model.dit(inputs, steps, grid)
    if model.predict == "eps":  # z0 = (z_t - σ ε̂) / γ
        pred = (z_t - model.sigma[t] * pred) / model.gamma[t].clamp_min(1e-6)
    if model.output_space == "latent":
        pred = model.tokenizer.decode(pred, grid)
    shown = inputs if model.input_space == "image" else model.tokenizer.decode(inputs, grid)
    return shown, pred


def denoising_figure(model: LDAE, clips: torch.Tensor, steps: Sequence[int], mean, std,
                     generator: torch.Generator) -> np.ndarray:
    """Fig. 7: one row per clip, ``clean | noisy | denoised`` for each step t."""
    rows = []
    for clip in clips:
        row = [_first_frame(clip, mean, std)]
        for t in steps:
            shown, pred = denoise(model, clip, t, generator)
            row += [_image(model, shown, clip, mean, std), _image(model, pred, clip, mean, std)]
        rows.append(row)
    return tile(rows)


def filter_figure(basis: torch.Tensor, t_patch: int, patch: int, channels: int, count: int = 32, per_row: int = 8,
                  zoom: int = 4) -> np.ndarray:
    """Fig. 8: basis rows [K, D] (first ``count``), each a t·p·p·C patch with its t frames side by side (one
    min-max scale per direction, so a frame difference shows as one)."""
    cells = []
    for row in basis[:count].float():
        f = row.reshape(t_patch, patch, patch, channels).transpose(0, 1).reshape(patch, t_patch * patch, channels)
        f = (f - f.min()) / (f.max() - f.min()).clamp_min(1e-12)
        f = f.repeat(1, 1, 3) if channels == 1 else f
        cell = (f * 255).round().to(torch.uint8).numpy()
        cells.append(cell.repeat(zoom, axis=0).repeat(zoom, axis=1))
    return tile([cells[i:i + per_row] for i in range(0, len(cells), per_row)])


def tokenizer_filters(tokenizer) -> Optional[torch.Tensor]:
    """The rows of V [d or D, D] for Fig. 8: PCA's basis (by decreasing eigenvalue), the patch AE's / VAE's encoder;
    None for tokenizers without patch filters (pixel identity, conv VAE). A per-frame tokenizer: its frame basis."""
    tokenizer = getattr(tokenizer, "inner", tokenizer)
    if hasattr(tokenizer, "basis"):
        return tokenizer.basis
    return getattr(tokenizer, "encoder", None) if tokenizer.LINEAR else None


def video_rows(model: LDAE, clip: torch.Tensor, steps: Sequence[int], mean, std, generator: torch.Generator,
               stride: int = 2) -> List[List[np.ndarray]]:
    """One clip [C, T, H, W]: rows original, then noisy input and denoised for each step t, each its frames at
    temporal ``stride`` (module docstring)."""
    rows = [list(to_uint8(clip, mean, std)[::stride])]
    for t in steps:
        shown, pred = denoise(model, clip, t, generator)
        rows += [list(_frames(model, x, clip, mean, std)[::stride]) for x in (shown, pred)]
    return rows


def render_ldae(model: LDAE, clips: torch.Tensor, out_dir: str, mean, std, generator: torch.Generator,
                sigmas: Sequence[float] = (0.5, 1.0, 2 ** 0.5), steps: Sequence[int] = (),
                video_format: str = "mp4") -> List[str]:
    """Write Figs. 6-8 for ``clips`` into ``out_dir``: ldae_noise.png, ldae_denoising.png, and ldae_filters.png for
    a patch-wise tokenizer (the rows of V: PCA's basis, the AE's / VAE's encoder); for clips (T > 1) also
    ldae_video_{i:03d}.png and .mp4|.gif per clip (``video_rows``)."""
    steps = tuple(steps) or tuple(sorted({0, model.num_steps // 4, model.num_steps // 2, model.num_steps - 1}))
    figures = {"ldae_noise.png": noise_figure(model, clips, sigmas, mean, std, generator),
               "ldae_denoising.png": denoising_figure(model, clips, steps, mean, std, generator)}
    filters = tokenizer_filters(model.tokenizer)
    if filters is not None:  # a per-frame tokenizer's filters are single frames: t from the rows' size
        frames = filters.shape[-1] // (model.patch_size ** 2 * model.in_chans)
        figures["ldae_filters.png"] = filter_figure(filters, frames, model.patch_size, model.in_chans)
    paths = []
    for name, image in figures.items():
        paths.append(os.path.join(out_dir, name))
        write_image(paths[-1], image)
    if clips.shape[2] > 1:
        for i, clip in enumerate(clips):
            rows = video_rows(model, clip, steps, mean, std, generator)
            paths += write_frame_rows(os.path.join(out_dir, f"ldae_video_{i:03d}"), rows, video_format)
    return paths
