#!/usr/bin/env python
"""The demo job: what self-supervised pretraining buys when labels are few. Each stage is the command a user would
type, printed before it runs:

  1. make the demo data (400 train / 100 val / 100 test clips of real MNIST digits moving; nothing downloaded)
  2. DiffMAE pretraining of a tiny ViT on all 400 training clips; the labels are not read
  3. fine-tuning on k labelled clips per class (DATA.LABELS_PER_CLASS), twice with the same labels and recipe:
     from the pretrained encoder and from random init (the same architecture) -> 2-view test on the 100 test clips
  4. linear probe on the same k labels of both encoders (frozen) -> the same test
  5. DDPM inpainting of masked validation clips -> PNG grids and an MP4 under OUT/pretrain/vis
  6. the side-by-side table, OUT/summary.png (accuracies; the pretraining loss curve) and OUT/summary.json

Examples:
  python tools/run_demo.py --data demo_data --out output/demo
  python tools/run_demo.py --seed 1 --labels-per-class 2 --out output/demo_k2_s1
  python tools/run_demo.py --quick --data /tmp/tiny_demo --out /tmp/demo   # seconds: tiny data and model, 1 epoch
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

import matplotlib
import yaml

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from videodiff.engine.logging import final_test_result, read_stats  # noqa: E402

PRETRAIN_CFG = "configs/demo/diffmae_tiny_demo.yaml"
FINETUNE_CFG = "configs/demo/ft_few_labels.yaml"
PROBE_CFG = "configs/demo/probe_few_labels.yaml"
INITS = ("pretrained", "scratch")
# --quick: the stages of the real demo at test size (seconds on one core): 20/4/4 clips, a 1-block ViT, 1 epoch.
QUICK_DATA = ["--num-train", "20", "--num-val", "4", "--num-test", "4"]
QUICK_OPTS = ["VIT.EMBED_DIM", "32", "VIT.DEPTH", "1", "VIT.NUM_HEADS", "2", "DATA.NUM_FRAMES", "4",
              "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32", "TEST.BATCH_SIZE", "4",
              "DATA_LOADER.NUM_WORKERS", "0", "TENSORBOARD.ENABLE", "False", "SOLVER.MAX_EPOCH", "1",
              "SOLVER.WARMUP_EPOCHS", "0.0", "LOG_PERIOD", "1"]
QUICK_PRETRAIN = ["DIFFMAE.DECODER_EMBED_DIM", "32", "DIFFMAE.DECODER_DEPTH", "1", "DIFFMAE.DECODER_NUM_HEADS", "2",
                  "TRAIN.BATCH_SIZE", "4", "TRAIN.CHECKPOINT_PERIOD", "1"]
QUICK_DOWNSTREAM = ["TRAIN.CHECKPOINT_PERIOD", "1", "DATA.LABELS_PER_CLASS", "1"]  # the tiny set has 2 per class


def stage(title: str, args, times: dict) -> None:
    command = [sys.executable, *args]
    print(f"\n== {title}\n$ {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    times[title] = round(time.perf_counter() - start, 1)
    print(f"== {title}: {times[title]:.0f} s", flush=True)


def newest_checkpoint(output_dir: str) -> str:
    found = sorted(glob.glob(os.path.join(output_dir, "checkpoints", "checkpoint_epoch_*.pyth")))
    if not found:
        raise SystemExit(f"no checkpoint in {output_dir}/checkpoints: did pretraining finish?")
    return found[-1]


def loss_curve(output_dir: str) -> tuple:
    """(optimizer steps, losses) of the run's logged training steps, in step order."""
    steps = [s for s in read_stats(output_dir) if s.get("split") == "train" and "iter" in s and "loss" in s]
    per_epoch = max(s["iter"] for s in steps)  # the last iteration of an epoch is always logged
    points = sorted({(s["epoch"] - 1) * per_epoch + s["iter"]: s["loss"] for s in steps}.items())
    return [p[0] for p in points], [p[1] for p in points]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo_data", help="demo data folder (made if missing)")
    parser.add_argument("--out", default="output/demo", help="output folder of the stages (use a fresh one per "
                                                              "setting: a stage resumes a finished run it finds)")
    parser.add_argument("--labels-per-class", type=int, default=None,
                        help=f"labelled clips per class for fine-tuning and probing (default: {FINETUNE_CFG}'s)")
    parser.add_argument("--seed", type=int, default=0, help="RNG_SEED of every stage and DATA.LABELS_SEED of the "
                                                            "labelled subset")
    parser.add_argument("--pretrain-epochs", type=int, default=None,
                        help=f"pretraining epochs (default: {PRETRAIN_CFG}'s SOLVER.MAX_EPOCH); BENCHMARKS.md says "
                             "how many it takes to beat random init")
    parser.add_argument("--no-probe", action="store_true", help="skip the linear probes (stage 4)")
    parser.add_argument("--quick", action="store_true", help="tiny data, model and schedule: the tests' version")
    return parser.parse_args(argv)


def run_stages(args) -> dict:
    """Runs stages 1-5; returns the stage times in seconds."""
    times, quick = {}, args.quick
    data = ["DATA.PATH_TO_DATA_DIR", args.data, "RNG_SEED", str(args.seed)]
    labels = ["DATA.LABELS_SEED", str(args.seed)]
    if args.labels_per_class is not None:
        labels += ["DATA.LABELS_PER_CLASS", str(args.labels_per_class)]
    small = QUICK_OPTS if quick else []
    pretrain = os.path.join(args.out, "pretrain")
    stage("demo data", ["tools/make_demo_data.py", "--out", args.data, *(QUICK_DATA if quick else [])], times)
    epochs = [] if args.pretrain_epochs is None else ["SOLVER.MAX_EPOCH", str(args.pretrain_epochs)]
    stage("DiffMAE pretraining", ["tools/run_net.py", "--cfg", PRETRAIN_CFG, *data, "OUTPUT_DIR", pretrain, *small,
                                  *(QUICK_PRETRAIN if quick else []), *epochs], times)
    weights = {"pretrained": ["TRAIN.CHECKPOINT_FILE_PATH", newest_checkpoint(pretrain)], "scratch": []}
    downstream = [*data, *small, *(QUICK_DOWNSTREAM if quick else []), *labels]  # the last value of a key wins
    kinds = [("finetune", FINETUNE_CFG, "fine-tuning")] + ([] if args.no_probe else [("probe", PROBE_CFG, "probe")])
    for kind, cfg, what in kinds:
        for init in INITS:
            stage(f"{what} from {'the pretrained encoder' if init == 'pretrained' else 'random init'} + test",
                  ["tools/run_net.py", "--cfg", cfg, *downstream, "OUTPUT_DIR", os.path.join(args.out, f"{kind}_{init}"),
                   *weights[init]], times)
    steps = ["--steps", "5", "--num", "2"] if quick else ["--steps", "100"]
    stage("DDPM inpainting figures", ["tools/visualize.py", "--cfg", PRETRAIN_CFG, *steps, *data, "OUTPUT_DIR",
                                      pretrain, *small, *(QUICK_PRETRAIN if quick else [])], times)
    return times


def collect(args, times: dict) -> dict:
    """Everything the table and the plot show, also written to OUT/summary.json."""
    kinds = ["finetune"] + ([] if args.no_probe else ["probe"])
    results = {kind: {init: final_test_result(os.path.join(args.out, f"{kind}_{init}")) for init in INITS}
               for kind in kinds}
    with open(os.path.join(args.out, "finetune_scratch", "config.yaml")) as f:
        k = yaml.safe_load(f)["DATA"]["LABELS_PER_CLASS"]  # the merged config the run used
    steps, losses = loss_curve(os.path.join(args.out, "pretrain"))
    with open(os.path.join(args.data, "train.csv")) as f:
        num_train = sum(1 for line in f if line.strip())
    return {"labels_per_class": k, "seed": args.seed, "num_train": num_train, "pretrain_steps": steps[-1],
            "loss_steps": steps,
            "losses": losses, "times_s": times,
            "top1": {kind: {init: r["top1_acc"] for init, r in by_init.items()} for kind, by_init in results.items()},
            "top5": {kind: {init: r["top5_acc"] for init, r in by_init.items()} for kind, by_init in results.items()},
            "num_test": results["finetune"]["scratch"]["num_videos"],
            "views": results["finetune"]["scratch"]["views_per_video_expected"]}


def table(summary: dict) -> str:
    """The side-by-side result: top-1 (top-5) of both encoders per protocol, and the gap."""
    k, top1, top5 = summary["labels_per_class"], summary["top1"], summary["top5"]
    n = summary["num_train"]
    lines = [f"{k} labelled clips per class ({10 * k} of {n}); test: {summary['num_test']} clips x {summary['views']} "
             f"views; pretraining: {summary['pretrain_steps']} steps on all {n} clips, no labels",
             f"{'top-1 % (top-5)':<16}{'pretrained':>14}{'random init':>14}{'gap':>9}"]
    names = {"finetune": "fine-tuning", "probe": "linear probe"}
    for kind in top1:
        p, s = top1[kind]["pretrained"], top1[kind]["scratch"]
        cells = [f"{top1[kind][i]:.0f} ({top5[kind][i]:.0f})" for i in INITS]
        lines.append(f"{names[kind]:<16}{cells[0]:>14}{cells[1]:>14}{p - s:>+9.0f}")
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    """Left: top-1 of both encoders per protocol (bars); right: the pretraining loss by step."""
    fig, (bars, curve) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1.2, 1]})
    kinds = list(summary["top1"])
    names = {"finetune": "fine-tuned", "probe": "linear probe"}
    for offset, init, color in ((-0.2, "pretrained", "tab:blue"), (0.2, "scratch", "tab:gray")):
        values = [summary["top1"][kind][init] for kind in kinds]
        drawn = bars.bar([i + offset for i in range(len(kinds))], values, width=0.4, color=color,
                         label="DiffMAE-pretrained" if init == "pretrained" else "random init")
        bars.bar_label(drawn, fmt="%.0f%%")
    bars.axhline(10, color="k", lw=0.8, ls=":", label="chance (10 classes)")
    bars.set_xticks(range(len(kinds)), [names[kind] for kind in kinds])
    bars.set_ylim(0, 100)
    bars.set_ylabel(f"top-1 on {summary['num_test']} test clips (%)")
    gap = summary["top1"]["finetune"]["pretrained"] - summary["top1"]["finetune"]["scratch"]
    bars.set_title(f"{summary['labels_per_class']} labels per class: pretraining {gap:+.0f} points fine-tuned")
    bars.legend(loc="upper right", fontsize=8)
    curve.plot(summary["loss_steps"], summary["losses"], color="tab:blue")
    curve.set_xlabel("pretraining step (no labels)")
    curve.set_ylabel("DiffMAE loss")
    curve.set_title("pretraining loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    times = run_stages(args)
    summary = collect(args, times)
    summary["total_s"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(summary, os.path.join(args.out, "summary.png"))
    print(f"\n{table(summary)}\n\ndemo done in {summary['total_s']:.0f} s: {os.path.join(args.out, 'summary.png')}, "
          f"figures in {os.path.join(args.out, 'pretrain', 'vis')}")


if __name__ == "__main__":
    main()
