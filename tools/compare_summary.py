#!/usr/bin/env python
"""One table and one figure over several finished tools/compare_methods.py studies (issue #15): e.g. the demo images
at 2,500 and at 15,000 steps and the demo videos at 15,000 steps, a block of rows and a panel each.

It reads each study's OUT/results.json (written by compare_methods.py, also by its --report-only) and runs nothing.
Every cell is the mean ± std over the seeds the study finished, with their count; the last row of each block is the
mean of the four protocols, for the columns that have all four.

Example:
  python tools/compare_summary.py --study "images, 2,500 steps" output/compare/images_e100 \\
      --study "images, 15,000 steps" output/compare/images_e600 \\
      --study "videos, 15,000 steps" output/compare/videos_e600 --out docs/benchmarks/compare_summary.png
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_methods import COLORS, NAMES, PROTOCOLS, cell, draw, mean_std, plt  # noqa: E402  (plt: Agg backend set)

BASELINES = ["pixels", "scratch"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", nargs=2, action="append", required=True, metavar=("LABEL", "DIR"),
                        help="a compare_methods.py --out folder and the name of its block / panel (repeat)")
    parser.add_argument("--out", required=True, help="the figure (PNG); the table goes next to it as .md")
    return parser.parse_args(argv)


def load(folder: str) -> tuple:
    """(results {init: {protocol: {seed: top-1}}}, its columns in report order, labels per class) of one study."""
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run tools/compare_methods.py ... --out {folder} (--report-only "
                                f"writes it from the finished cells)")
    with open(path) as f:
        report = json.load(f)
    results = {init: {protocol: {int(seed): v for seed, v in seeds.items()} for protocol, seeds in by_protocol.items()}
               for init, by_protocol in report["top1"].items()}
    args = report["args"]
    order = [*BASELINES, *args["methods"], *(label for label, _ in args.get("with_variant") or [])]
    return results, [i for i in order if i in results], args["labels_per_class"]


def average(by_protocol: dict):
    """Mean over the four protocols of the per-protocol means; None unless all four have a result."""
    if not all(by_protocol.get(protocol) for protocol in PROTOCOLS):
        return None
    return statistics.mean(mean_std(by_protocol[protocol].values())[0] for protocol in PROTOCOLS)


def all_columns(studies: list) -> list:
    """Every encoder of every study, in order of first appearance: the table's columns and the figure's colours."""
    columns = []
    for _, (_, inits, _) in studies:
        columns += [i for i in inits if i not in columns]
    return columns


def table(studies: list) -> str:
    """Markdown: a block of rows per study (one per protocol, then the mean of the four), a column per encoder."""
    columns = all_columns(studies)
    lines = ["| study | protocol | " + " | ".join(NAMES.get(c, c) for c in columns) + " |",
             "|" + "---|" * (len(columns) + 2)]
    for label, (results, _, k) in studies:
        for protocol, name in PROTOCOLS.items():
            cells = [cell(results.get(c, {}).get(protocol, {})) for c in columns]
            lines.append(f"| {label} | {name.replace('k per', f'{k} per')} | " + " | ".join(cells) + " |")
        means = [average(results.get(c, {})) for c in columns]
        lines.append(f"| {label} | **mean of the four** | " +
                     " | ".join("–" if m is None else f"**{m:.1f}**" for m in means) + " |")
    return "\n".join(lines)


def figure(studies: list, path: str) -> None:
    fig, axes = plt.subplots(len(studies), 1, figsize=(10, 3.6 * len(studies)), squeeze=False)
    variants = [c for c in all_columns(studies) if c not in COLORS and c != "pixels"]
    for ax, (label, (results, inits, k)) in zip(axes[:, 0], studies):
        draw(ax, results, [i for i in inits if i != "pixels"], k, variants)
        ax.set_title(f"demo {label} (bars: mean over seeds, dots: each seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    studies = [(label, load(folder)) for label, folder in args.study]
    text = table(studies)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text + "\n")
    figure(studies, args.out)
    print(text)


if __name__ == "__main__":
    main()
