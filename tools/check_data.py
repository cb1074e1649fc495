#!/usr/bin/env python
"""Check a data set before a long run: open every entry of the split lists in parallel, report, clean the lists.

Every video is opened with DATA.DECODING_BACKEND and its first and last frames decoded; every image decoded as
the image-folder dataset does. Per checked split, --out gets:
  {split}_report.tsv      every entry: path, line, label, status, frames, height, width, fps, duration_s, mode,
                          warning, reason
  {split}_unreadable.tsv  path, line in the list, reason (header only when all were readable)
  {split}.csv             the cleaned list: the input's good lines verbatim (image folders: {split}/{class}/
                          holding links to the good images, every class folder kept)
Splits that exist but were not checked are copied unchanged (lists) or linked (image folders), so --out is a
complete data folder: the last line printed says which DATA.PATH_TO_DATA_DIR (and DATA.PATH_PREFIX) to train with.

Options come before the KEY VALUE overrides. Exit status: 0 all entries readable, 1 some unreadable, 2 a usage or
config error (one line naming it).

Examples:
  python tools/check_data.py --cfg configs/demo/base.yaml DATA.PATH_TO_DATA_DIR demo_data
  python tools/check_data.py --cfg configs/K400/diffmae_vitl.yaml --workers 64 --out /scratch/k400_check \\
      DATA.PATH_TO_DATA_DIR /data/k400 && python tools/run_net.py --cfg configs/K400/diffmae_vitl.yaml ...
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import videodiff  # noqa: E402,F401  (installs the pytorchvideo compat shim first)
from videodiff.cli import run_reporting_errors  # noqa: E402
from videodiff.config import load_config  # noqa: E402
from videodiff.data.check import (  # noqa: E402
    DEFAULT_TIMEOUT, check_paths, checker, copy_unchecked, dataset_name, existing_splits, list_entries,
    split_source, summarize, write_split)
from videodiff.data.kinetics import SPLITS  # noqa: E402

# Seconds between progress lines on stderr.
PROGRESS_PERIOD = 30.0


def default_workers() -> int:
    """The cores this process may use (a batch scheduler's allocation), else os.cpu_count()."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="YAML config (its DATA / TRAIN / TEST keys)")
    parser.add_argument("--splits", default="",
                        help=f"comma-separated, from {','.join(SPLITS)} (default: those whose list or folder exists)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="processes opening files (default: the cores available, %(default)s here)")
    parser.add_argument("--out", default="", help="output folder (default: OUTPUT_DIR/data_check)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds one entry may take before it is reported as hanging (0: no limit; "
                             "default %(default)g)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        parser.error(f"--splits: unknown split {unknown[0]!r}; choose from {', '.join(SPLITS)}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    args.splits = splits
    return args


def output_folder(cfg, out: str) -> str:
    out = out or os.path.join(cfg.OUTPUT_DIR, "data_check")
    data = cfg.DATA.PATH_TO_DATA_DIR
    if os.path.realpath(out) == os.path.realpath(data or "."):
        raise ValueError(f"--out {out} is DATA.PATH_TO_DATA_DIR: the cleaned lists would overwrite the originals")
    return out


def progress_printer(split: str, total: int, start: float):
    last = [start]

    def show(done: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= PROGRESS_PERIOD and done < total:
            last[0] = now
            rate = done / (now - start)
            print(f"{split}: {done}/{total} checked, {rate:.1f}/s, about {(total - done) / rate / 60:.0f} min left",
                  file=sys.stderr, flush=True)
    return show


def train_hint(cfg, out: str) -> str:
    """The overrides that point a run at the cleaned folder, resolving every path as before."""
    hint = f"DATA.PATH_TO_DATA_DIR {os.path.abspath(out)}"
    uses_lists = any(dataset_name(cfg, split) != "imagefolder" for split in SPLITS)
    if uses_lists and not cfg.DATA.PATH_PREFIX:  # relative list paths were relative to the old folder
        hint += f" DATA.PATH_PREFIX {os.path.abspath(cfg.DATA.PATH_TO_DATA_DIR)}"
    return hint


def run(args) -> int:
    cfg = load_config(args.cfg_file, args.overrides)
    out = output_folder(cfg, args.out)
    present = existing_splits(cfg)
    splits = args.splits or present
    if not splits:
        raise FileNotFoundError("no split to check: none of " + ", ".join(split_source(cfg, s) for s in SPLITS))
    listed = {split: list_entries(cfg, split) for split in splits}  # every list error before any long work
    summaries, num_bad = [], 0
    for split, (kind, entries) in listed.items():
        start = time.perf_counter()
        facts = check_paths([e.path for e in entries], checker(kind, cfg.DATA.DECODING_BACKEND), args.workers,
                            args.timeout, progress_printer(split, len(entries), start))
        seconds = time.perf_counter() - start
        write_split(out, split, kind, entries, facts)
        summaries.append(summarize(split, split_source(cfg, split), entries, facts, seconds, args.workers))
        print(summaries[-1], flush=True)
        num_bad += sum(not f.ok for f in facts)
    copied = [split for split in present if split not in listed]
    for split in copied:
        copy_unchecked(cfg, out, split)
    tail = [f"not checked, copied unchanged: {', '.join(copied)}"] if copied else []
    tail += [f"{'unreadable entries: ' + str(num_bad) if num_bad else 'all entries readable'}; reports and cleaned "
             f"data in {out}", f"train on the cleaned data with: {train_hint(cfg, out)}"]
    print("\n".join(tail))
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write("\n".join(summaries + tail) + "\n")
    return 1 if num_bad else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_reporting_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
