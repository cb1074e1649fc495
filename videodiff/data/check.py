"""Check a data set before a long run: open every entry of its split lists, in parallel, and say what is in them.

Entries are enumerated by the datasets themselves (``build_dataset``: the same list parsing, prefixes, separators,
class folders and label checks as training), so the check sees exactly the files a run will open. Each video is
opened with ``DATA.DECODING_BACKEND`` and its first and last frames are decoded (a truncated file keeps its header
but loses its last frames); each image is decoded as the image-folder dataset decodes it. An unreadable entry gets
a one-line reason; nothing one file does stops the check: decoder exceptions become reasons, and a file that
crashes or hangs its worker process is re-run alone and reported as such (``check_paths``).

What a check writes for a split (``write_split``): ``{split}_report.tsv`` (every entry's facts),
``{split}_unreadable.tsv`` (path, list line, reason) and the cleaned data: ``{split}.csv`` with the list's good
lines verbatim, or for an image folder ``{split}/{class}/`` holding links to the good images (every class folder
kept, so labels do not shift).
"""
import csv
import multiprocessing
import os
import shutil
import signal
import statistics
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from iopath.common.file_io import g_pathmgr
from PIL import Image

from videodiff.data.build import build_dataset
from videodiff.data.decoding import open_video
from videodiff.data.imagefolder import ImageFolderClips, _read_image
from videodiff.data.kinetics import SPLITS, KineticsDataset
from videodiff.data.media_errors import ImageDecodeError, MediaError
from videodiff.data.media_files import media_source

# Seconds one entry may take before its worker is killed and the entry reported as hung.
DEFAULT_TIMEOUT = 300.0
# Entries per task sent to a worker: small, so a crashed worker loses little work and the load stays even.
_CHUNK = 4
# Image modes the loader converts to RGB without surprise; others get a warning.
_PLAIN_MODES = ("RGB", "L", "P")
_REPORT_FIELDS = ("path", "line", "label", "status", "frames", "height", "width", "fps", "duration_s", "mode",
                  "warning", "reason")


@dataclass
class Entry:
    """One item of a split as the dataset lists it."""

    path: str             # as the dataset opens it (prefix joined)
    label: int
    line: Optional[int]   # 1-based line in the list file; None for image folders
    text: str             # the list line verbatim; for image folders the path below the split folder


@dataclass
class Facts:
    """What opening one entry found."""

    ok: bool
    reason: str = ""      # why it is unreadable
    warning: str = ""     # readable, but worth a look (e.g. 16-bit images)
    frames: int = 0
    height: int = 0
    width: int = 0
    fps: float = 0.0      # from the frame timestamps; 0 for images and one-frame videos
    duration: float = 0.0  # seconds: frames / fps
    mode: str = ""        # PIL mode of an image


# ---------------------------------------------------------------- what to check
def dataset_name(cfg, split: str) -> str:
    """The dataset a run uses for ``split`` (train: TRAIN.DATASET, val/test: TEST.DATASET, as build_dataset)."""
    return cfg.TRAIN.DATASET if split == "train" else cfg.TEST.DATASET


def split_source(cfg, split: str) -> str:
    """The list file (kinetics) or folder (imagefolder) that ``from_cfg`` reads for ``split``."""
    name = "" if dataset_name(cfg, split) == "imagefolder" else ".csv"
    return os.path.join(cfg.DATA.PATH_TO_DATA_DIR, split + name)


def existing_splits(cfg) -> List[str]:
    """The splits whose list file or folder exists."""
    return [split for split in SPLITS if g_pathmgr.exists(split_source(cfg, split))]


def list_entries(cfg, split: str) -> Tuple[str, List[Entry]]:
    """``("video" | "image", entries)`` of ``split``, enumerated by the dataset class a run builds.

    Raises what building the dataset raises (missing list, malformed lines, too many classes, ...).
    """
    dataset = build_dataset(cfg, split)
    if isinstance(dataset, KineticsDataset):
        return "video", _numbered(split_source(cfg, split), dataset.videos)
    if isinstance(dataset, ImageFolderClips):
        folder = split_source(cfg, split)
        return "image", [Entry(path, label, None, os.path.relpath(path, folder)) for path, label in dataset.images]
    raise ValueError(f"{dataset_name(cfg, split)!r}: the data check knows kinetics and imagefolder datasets")


def _numbered(list_path: str, videos: Sequence[Tuple[str, int]]) -> List[Entry]:
    """Pair the dataset's videos with their list lines: read_video_list keeps every non-blank line, in order."""
    with g_pathmgr.open(list_path, "r") as f:
        lines = [(n, line) for n, line in enumerate(f.read().splitlines(), start=1) if line.strip()]
    if len(lines) != len(videos):
        raise RuntimeError(f"{list_path}: {len(lines)} non-blank lines but the dataset lists {len(videos)} videos")
    return [Entry(path, label, n, line) for (path, label), (n, line) in zip(videos, lines)]


def checker(kind: str, backend: str) -> Callable[[str], Facts]:
    """The per-entry check for ``kind`` (picklable, for worker processes)."""
    return partial(check_video, backend=backend) if kind == "video" else check_image


# ---------------------------------------------------------------- one entry
def check_video(path: str, backend: str) -> Facts:
    """Open ``path`` with ``backend``, read its timestamps, decode its first and last frames."""
    with open_video(path, backend) as video:
        count = video.num_frames
        stamps = video.timestamps()
        frames = video.decode([0])
        if count > 1:  # on its own: a backend decoding [0, last] in one call would decode every frame between
            video.decode([count - 1])
    fps = (count - 1) / float(stamps[-1]) if count > 1 and stamps[-1] > 0 else 0.0
    return Facts(True, frames=count, height=frames.shape[1], width=frames.shape[2], fps=fps,
                 duration=count / fps if fps else 0.0)


def check_image(path: str) -> Facts:
    """Decode ``path`` as the image-folder dataset does; warn about modes its RGB conversion distorts."""
    rgb = _read_image(path)  # [1, H, W, 3]; the dataset's own reader, so the verdict is the dataset's
    source = media_source(path, ImageDecodeError)
    try:
        with Image.open(source) as image:  # header only: the mode the file was stored in
            mode = image.mode
    finally:
        if not isinstance(source, str):
            source.close()
    return Facts(True, warning=_mode_warning(mode), height=rgb.shape[1], width=rgb.shape[2], frames=1, mode=mode)


def _mode_warning(mode: str) -> str:
    if mode.startswith("I;16") or mode == "I":
        return f"{mode}: 16-bit image, scaled to 8 bits by the loader (imagefolder.rgb_uint8)"
    if mode == "F":
        return f"{mode}: 32-bit float image; the loader's convert('RGB') saturates values above 255"
    if mode not in _PLAIN_MODES:
        return f"{mode}: unusual mode, converted to RGB by the loader"
    return ""


def _safe(check: Callable[[str], Facts], path: str) -> Facts:
    """``check(path)``, with any exception turned into an unreadable verdict with a one-line reason."""
    try:
        return check(path)
    except MediaError as e:
        return Facts(False, reason=e.reason)
    except Exception as e:  # noqa: BLE001  (one bad file must not stop the check of 240k)
        text = " ".join(str(e).split())
        return Facts(False, reason=f"{type(e).__name__}: {text}" if text else type(e).__name__)


# ---------------------------------------------------------------- many entries, in worker processes
# Each worker records the entry it is working on in its slot of a shared array, so that when a worker dies
# (a decoder crash, or the per-entry alarm on a hang) the entries in flight are known and re-run one by one.
_slots, _slot, _timeout = None, -1, 0.0


def check_paths(paths: Sequence[str], check: Callable[[str], Facts], workers: int,
                timeout: float = DEFAULT_TIMEOUT, progress: Optional[Callable[[int], None]] = None) -> List[Facts]:
    """``check`` of every path, in ``workers`` processes, in the order of ``paths``.

    A path whose check kills its process (segfault) or runs past ``timeout`` seconds (0: no limit) is re-run
    alone and reported unreadable with what happened; the other entries go on in a fresh pool.
    ``progress(number done)`` is called as entries finish.
    """
    facts: List[Optional[Facts]] = [None] * len(paths)
    todo = list(range(len(paths)))
    while todo:
        suspects = _pool_round(paths, todo, check, max(1, workers), timeout, facts, progress)
        for index in suspects:
            facts[index] = _isolated(check, paths[index], timeout)
        left = [i for i in todo if facts[i] is None]
        if len(left) == len(todo):
            raise RuntimeError("the check's worker processes keep dying before finishing any entry")
        todo = left
    return facts


def _pool_round(paths, todo, check, workers, timeout, facts, progress) -> List[int]:
    """Check ``todo`` in a pool, filling ``facts``; the entries in flight when a worker died, if one did."""
    chunks = [todo[k:k + _CHUNK] for k in range(0, len(todo), _CHUNK)]
    workers = min(workers, len(chunks))
    context = multiprocessing.get_context()
    slots = context.Array("q", [-1] * workers, lock=False)  # each worker writes its own slot only
    counter = context.Value("i", 0)
    done, broken = sum(f is not None for f in facts), False
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(slots, counter, timeout)) as pool:
        futures = [pool.submit(_check_chunk, check, [(i, paths[i]) for i in chunk]) for chunk in chunks]
        try:
            for future in as_completed(futures):
                results = future.result()
                for index, fact in results:
                    facts[index] = fact
                done += len(results)
                if progress:
                    progress(done)
        except BrokenProcessPool:
            broken = True
    if not broken:
        return []
    for future in futures:  # keep what finished before the pool broke
        if future.done() and not future.cancelled() and future.exception() is None:
            for index, fact in future.result():
                facts[index] = fact
    return [index for index in slots if index >= 0 and facts[index] is None]  # the workers are gone now


def _init_worker(slots, counter, timeout: float) -> None:
    global _slots, _slot, _timeout
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the alarm's default action ends a hung worker
    torch.set_num_threads(1)
    with counter.get_lock():
        _slot = counter.value
        counter.value += 1
    _slots, _timeout = slots, timeout


def _check_chunk(check, chunk: List[Tuple[int, str]]) -> List[Tuple[int, Facts]]:
    out = []
    for index, path in chunk:
        _slots[_slot] = index
        _alarm(_timeout)
        out.append((index, _safe(check, path)))
        _alarm(0)
    _slots[_slot] = -1
    return out


def _alarm(seconds: float) -> None:
    if hasattr(signal, "SIGALRM"):
        signal.alarm(int(seconds + 0.999) if seconds > 0 else 0)


def _isolated(check, path: str, timeout: float) -> Facts:
    """``check(path)`` alone in a fresh process; if that process dies too, the verdict says how."""
    context = multiprocessing.get_context()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_isolated_child, args=(send, check, path, timeout), daemon=True)
    process.start()
    send.close()
    try:
        fact = receive.recv()
    except EOFError:
        fact = None
    process.join()
    receive.close()
    return fact if fact is not None else Facts(False, reason=_death_reason(process.exitcode, timeout))


def _isolated_child(send, check, path: str, timeout: float) -> None:
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    torch.set_num_threads(1)
    _alarm(timeout)
    send.send(_safe(check, path))


def _death_reason(exitcode: Optional[int], timeout: float) -> str:
    if hasattr(signal, "SIGALRM") and exitcode == -signal.SIGALRM:
        return f"no answer within {timeout:g} s (the decoder hangs on it; --timeout)"
    if exitcode is not None and exitcode < 0:
        return f"the decoder crashed its process ({signal.Signals(-exitcode).name})"
    return f"the checking process ended with status {exitcode}"


# ---------------------------------------------------------------- summary and files
def summarize(split: str, source: str, entries: Sequence[Entry], facts: Sequence[Facts], seconds: float,
              workers: int) -> str:
    """The human summary of one split's check."""
    good = [f for f in facts if f.ok]
    bad = [(e, f) for e, f in zip(entries, facts) if not f.ok]
    warned = [f for f in good if f.warning]
    lines = [f"{split}: {len(entries)} entries ({source}), {len(good)} readable, {len(bad)} unreadable, "
             f"{len(warned)} with warnings"]
    if bad:
        lines.append("  unreadable: " + _counted(Counter(f.reason for _, f in bad)))
    if warned:
        lines.append("  warnings: " + _counted(Counter(f.warning for f in warned)))
    if good:
        counts = [f.frames for f in good]
        lines.append(f"  frames min/median/max: {min(counts)} / {statistics.median(counts):g} / {max(counts)}")
        lines.append("  sizes (HxW): " + _counted(Counter(f"{f.height}x{f.width}" for f in good)))
        if any(f.mode for f in good):
            lines.append("  modes: " + _counted(Counter(f.mode for f in good)))
        if any(f.fps for f in good):
            lines.append("  fps: " + _counted(Counter(f"{f.fps:.2f}" for f in good if f.fps)))
            total = sum(f.duration for f in good)
            lines.append(f"  total duration: {total / 3600:.2f} h ({total:.0f} s)")
    rate = len(entries) / seconds if seconds > 0 else 0.0
    lines.append(f"  checked in {seconds:.1f} s with {workers} workers: {rate:.1f} entries/s")
    return "\n".join(lines)


def _counted(counts: Counter, shown: int = 5) -> str:
    text = "; ".join(f"{key} ({n})" for key, n in counts.most_common(shown))
    more = len(counts) - shown
    return text + (f"; and {more} more kinds" if more > 0 else "")


def write_split(out_dir: str, split: str, kind: str, entries: Sequence[Entry], facts: Sequence[Facts]) -> None:
    """``{split}_report.tsv``, ``{split}_unreadable.tsv`` and the cleaned list (or image folder) in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{split}_report.tsv"), "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(_REPORT_FIELDS)
        for entry, fact in zip(entries, facts):
            writer.writerow([entry.path, entry.line or "", entry.label, "ok" if fact.ok else "unreadable",
                             fact.frames, fact.height, fact.width, f"{fact.fps:.3f}", f"{fact.duration:.3f}",
                             fact.mode, fact.warning, fact.reason])
    with open(os.path.join(out_dir, f"{split}_unreadable.tsv"), "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(("path", "line", "reason"))
        writer.writerows((e.path, e.line or "", f.reason) for e, f in zip(entries, facts) if not f.ok)
    good = [entry for entry, fact in zip(entries, facts) if fact.ok]
    if kind == "video":
        with open(os.path.join(out_dir, f"{split}.csv"), "w") as f:
            f.writelines(entry.text + "\n" for entry in good)
    else:
        _link_images(os.path.join(out_dir, split), _class_names(entries), good)


def _class_names(entries: Sequence[Entry]) -> List[str]:
    """Every class folder of an image split (from the entries' paths), so emptied classes keep their label."""
    return sorted({os.path.dirname(entry.text) for entry in entries})


def _link_images(folder: str, classes: Sequence[str], good: Sequence[Entry]) -> None:
    _clear_links(folder)
    for name in classes:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    for entry in good:
        os.symlink(os.path.abspath(entry.path), os.path.join(folder, entry.text))


def copy_unchecked(cfg, out_dir: str, split: str) -> None:
    """Put a split that was not checked into ``out_dir`` unchanged: its list copied, or its folder linked."""
    os.makedirs(out_dir, exist_ok=True)
    source = split_source(cfg, split)
    target = os.path.join(out_dir, os.path.basename(source))
    if dataset_name(cfg, split) == "imagefolder":
        _clear_links(target)
        os.symlink(os.path.abspath(source), target)
    else:
        with g_pathmgr.open(source, "r") as src, open(target, "w") as dst:
            dst.write(src.read())


def _clear_links(path: str) -> None:
    """Remove a previous check's links at ``path``; refuse to delete anything that is not a link."""
    if os.path.islink(path) or not os.path.lexists(path):
        if os.path.lexists(path):
            os.unlink(path)
        return
    for root, _, files in os.walk(path):
        real = [name for name in files if not os.path.islink(os.path.join(root, name))]
        if real:
            raise ValueError(f"{path} holds files that a data check did not write ({os.path.join(root, real[0])});"
                             f" choose another --out")
    shutil.rmtree(path)
