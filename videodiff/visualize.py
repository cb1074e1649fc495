"""DiffMAE generation figures (supplement Figs. 2-6): pure functions from clips and masks to PNG / MP4 / GIF files.

Images (T = 1): one row per sample, columns ``original | masked | t=1000 | t=500 | t=0``. The t = 1000 and
t = 500 cells show the noisy x_t the reverse process fed to the decoder at those steps (our indices T - 1 and
T/2 - 1 of a T-step schedule, 999 and 499 for T = 1000; index 0 is the paper's t = 1), pasted into the masked
tokens; t = 0 is the final output, as in the paper.
Videos: per sample, rows ``original / masked / output`` with the frames at temporal stride 2 (the model
predicts one frame of each 2-frame token and holds it, so the even frames are the generated ones), written as a
PNG and as an MP4 (or GIF) whose frames are those rows stacked.

Everything is un-normalised with DATA.MEAN / DATA.STD and drawn with numpy + Pillow; cells are separated by
white gaps of ``GAP`` pixels, so a grid of r x c cells of h x w is ``(r·h + (r-1)·GAP) x (c·w + (c-1)·GAP)``.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from videodiff.data.encoding import write_image, write_video
from videodiff.models.masking import Mask
from videodiff.models.patchify import patch_normalize, patchify, time_slice

GAP = 2
MASKED_GREY = 128
IMAGE_COLUMNS = ("original", "masked", "t=1000", "t=500", "t=0")
VIDEO_ROWS = ("original", "masked", "output")


def to_uint8(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised clip [C, T, H, W] -> RGB frames uint8 [T, H, W, 3] (x·std + mean, clipped to [0, 1])."""
    c = clip.shape[0]
    pixels = clip.detach().float().cpu() * torch.tensor(std).view(c, 1, 1, 1) + torch.tensor(mean).view(c, 1, 1, 1)
    frames = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    return np.repeat(frames, 3, axis=-1) if c == 1 else frames


def pixel_mask(token_mask: torch.Tensor, grid: Tuple[int, int, int], t_patch: int, patch: int) -> np.ndarray:
    """One sample's token mask [N] (True = masked) -> per-pixel mask [T, H, W] bool."""
    m = token_mask.detach().cpu().view(*grid).numpy()
    return m.repeat(t_patch, 0).repeat(patch, 1).repeat(patch, 2)


def grey_out(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Frames [T, H, W, 3] with the masked pixels [T, H, W] painted grey (MAE's figure convention)."""
    out = frames.copy()
    out[mask] = MASKED_GREY
    return out


def tile(rows: List[List[np.ndarray]], gap: int = GAP) -> np.ndarray:
    """Rows of equally sized cells [h, w, 3] -> one image on a white background."""
    h, w = rows[0][0].shape[:2]
    num_cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + gap) - gap, num_cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = cell
    return canvas


def even_pad(image: np.ndarray) -> np.ndarray:
    """Pad [H, W, 3] with white to even H and W (H.264 in yuv420p needs both even)."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)


def write_gif(path: str, frames: np.ndarray, fps: int) -> None:
    """Frames [T, H, W, 3] uint8 -> looping GIF."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def nearest_step(intermediates: Dict[int, torch.Tensor], step: int) -> torch.Tensor:
    """The recorded x_t whose chain step is nearest ``step`` (a strided chain records its own steps)."""
    return intermediates[min(intermediates, key=lambda k: (abs(k - step), -k))]


def pixel_slices(model, clip: torch.Tensor, mask: Mask, slices: torch.Tensor, normalized: bool) -> torch.Tensor:
    """Generated slices [B, M, p·p·C] in the clip's space. A norm_pix model returns per-patch normalised slices;
    those are shown with the ground-truth patch statistics (as MAE's own demo does) -- for display only."""
    if not normalized:
        return slices
    target = time_slice(patchify(clip, model.t_patch, model.patch_size), model.t_patch, model.patch_size,
                        model.in_chans, model.target_slice)
    _, mean, std = patch_normalize(torch.gather(target, 1, mask.ids_masked[..., None].expand(-1, -1, target.shape[-1])))
    return slices * std + mean


@torch.no_grad()
def generate_panels(model, clip: torch.Tensor, mask: Mask, num_sample_steps: Optional[int] = None,
                    generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """Run DiffMAE's reverse process once; -> clips [B, C, T, H, W] for "t=1000", "t=500" and "t=0" (= output)."""
    steps = model.diffusion.num_steps
    noisy = (steps - 1, max(steps // 2 - 1, 0))  # the paper's t = T and t = T/2 (t = 0 is the output, not an x_t)
    out = model.generate(clip, mask=mask, num_sample_steps=num_sample_steps, generator=generator,
                         return_intermediates_at=noisy)
    panels = {}
    for label, step in zip(("t=1000", "t=500"), noisy):
        x_t = pixel_slices(model, clip, mask, nearest_step(out["intermediates"], step), out["normalized"])
        panels[label] = model.paste(clip, x_t, mask)
    panels["t=0"] = model.paste(clip, pixel_slices(model, clip, mask, out["x0"], out["normalized"]), mask)
    return panels


def image_grid(originals: List[np.ndarray], masks: List[np.ndarray], panels: Dict[str, List[np.ndarray]]) -> np.ndarray:
    """One row per sample: original | masked | t=1000 | t=500 | t=0 (each frame [1, H, W, 3] -> cell [H, W, 3])."""
    rows = []
    for i, original in enumerate(originals):
        cells = [original[0], grey_out(original, masks[i])[0]] + [panels[k][i][0] for k in IMAGE_COLUMNS[2:]]
        rows.append(cells)
    return tile(rows)


def video_rows(original: np.ndarray, mask: np.ndarray, output: np.ndarray, stride: int = 2) -> List[List[np.ndarray]]:
    """Rows original / masked / output of one clip, each the frames [T, H, W, 3] at temporal ``stride``."""
    return [list(x[::stride]) for x in (original, grey_out(original, mask), output)]


def write_video_figure(prefix: str, original: np.ndarray, mask: np.ndarray, output: np.ndarray,
                       video_format: str = "mp4", fps: int = 5) -> List[str]:
    """``prefix.png`` (3 rows x T/2 frames) and ``prefix.mp4|gif`` (the three rows stacked, one frame per step)."""
    return write_frame_rows(prefix, video_rows(original, mask, output), video_format, fps)


def write_frame_rows(prefix: str, rows: List[List[np.ndarray]], video_format: str = "mp4",
                     fps: int = 5) -> List[str]:
    """Rows of equally many frames [H, W, 3] -> ``prefix.png`` (the grid) and ``prefix.mp4|gif`` (movie frame j:
    the rows' j-th frames stacked)."""
    write_image(f"{prefix}.png", tile(rows))
    frames = np.stack([even_pad(tile([[row[j]] for row in rows])) for j in range(len(rows[0]))])
    movie = f"{prefix}.{video_format}"
    if video_format == "gif":
        write_gif(movie, frames, fps)
    else:
        write_video(movie, frames, fps=fps)
    return [f"{prefix}.png", movie]


def render(model, clips: torch.Tensor, mask: Mask, out_dir: str, mean: Sequence[float], std: Sequence[float],
           num_sample_steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
           video_format: str = "mp4") -> List[str]:
    """Generate for ``clips`` [B, C, T, H, W] under ``mask`` and write the figures into ``out_dir``; -> paths.

    Images: ``out_dir/images.png`` (B rows x 5 columns). Videos: ``out_dir/video_{i:03d}.png`` and ``.mp4|.gif``.
    """
    model.eval()
    panels = generate_panels(model, clips, mask, num_sample_steps, generator)
    grid = model.grid(clips)
    originals = [to_uint8(c, mean, std) for c in clips]
    masks = [pixel_mask(m, grid, model.t_patch, model.patch_size) for m in mask.mask]
    frames = {label: [to_uint8(c, mean, std) for c in panel] for label, panel in panels.items()}
    if clips.shape[2] == 1:
        path = os.path.join(out_dir, "images.png")
        write_image(path, image_grid(originals, masks, frames))
        return [path]
    paths = []
    for i in range(len(clips)):
        prefix = os.path.join(out_dir, f"video_{i:03d}")
        paths += write_video_figure(prefix, originals[i], masks[i], frames["t=0"][i], video_format)
    return paths
