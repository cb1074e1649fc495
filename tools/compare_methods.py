#!/usr/bin/env python
"""MAE vs DiffMAE vs l-DAE at equal pretraining steps on the demo images or videos (issue #15), every cell one
command of the real pipeline, printed before it runs.

Per seed and method (same encoder: the demo ViT, 4 blocks of width 96; l-DAE's is the first half of its DiT):
  pretrain   the method's demo config for --epochs epochs on all train clips, no labels, then the study's logistic
             regression probe on all train labels (tools/pretrain_study.py: "probe_full", with random init and raw
             pixels as baselines)
  ft_full    fine-tuning on all labels (configs/demo/diffmae_tiny_ft.yaml)        -> multi-view test
  ft_few     fine-tuning on k labels per class (configs/demo/ft_few_labels.yaml)  -> multi-view test
  probe_few  linear probe on the same k labels (configs/demo/probe_few_labels.yaml) -> multi-view test
and ft_full / ft_few / probe_few once per seed from random init of the same ViT ("scratch"). The few labels are drawn
with DATA.LABELS_SEED = the seed. A cell whose result exists is read, not rerun: delete its folder to rerun it.
Writes OUT/results.json (every cell: top-1, command, wall time), OUT/table.md and OUT/compare.png.

Examples:
  python tools/compare_methods.py --kind images --epochs 100 --seeds 0 1 2 --out output/compare/images_e100
  python tools/compare_methods.py --kind videos --epochs 600 --out output/compare/videos_e600   # 15,000 steps
  python tools/compare_methods.py --kind images --epochs 100 --report-only --out output/compare/images_e100
  # a variant of one method (DiffMAE with rho 1.0), only the all-label protocols, random init read from the study above
  python tools/compare_methods.py --kind images --epochs 100 --seeds 0 1 2 --methods diffmae --no-scratch \
      --protocols ft_full --pretrain-opts DIFFUSION.RHO 1.0 --out output/compare/images_e100_diffmae_rho1
  # the main study's report with that variant as one more column
  python tools/compare_methods.py --kind images --epochs 100 --seeds 0 1 2 --report-only \
      --with-variant "DiffMAE rho 1.0" output/compare/images_e100_diffmae_rho1 --out output/compare/images_e100
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from videodiff.config import load_config  # noqa: E402
from videodiff.engine.logging import final_test_result  # noqa: E402

PRETRAIN_CFGS = {
    "images": {"diffmae": "configs/demo/diffmae_tiny_images.yaml", "mae": "configs/demo/mae_tiny_images.yaml",
               "ldae": "configs/demo/ldae_tiny_images.yaml"},
    "videos": {"diffmae": "configs/demo/diffmae_tiny_long.yaml", "mae": "configs/demo/mae_tiny_long.yaml",
               "ldae": "configs/demo/ldae_tiny_videos.yaml"},
}
DOWNSTREAM_CFGS = {"ft_full": "configs/demo/diffmae_tiny_ft.yaml", "ft_few": "configs/demo/ft_few_labels.yaml",
                   "probe_few": "configs/demo/probe_few_labels.yaml"}
# The video configs' downstream recipes read images as one-frame clips with these keys.
IMAGE_KEYS = ["TRAIN.DATASET", "imagefolder", "TEST.DATASET", "imagefolder", "DATA.NUM_FRAMES", "1",
              "DATA.SAMPLING_RATE", "1", "VIT.TEMPORAL_PATCH_SIZE", "1"]
# A ViT that receives a folded DiT encoder uses DiT's LayerNorm eps; the probe reads its blocks without the ViT's
# final norm, which the DiT half does not have (as configs/demo/ldae_tiny_linprobe.yaml).
LDAE_KEYS = {"ft_full": ["VIT.NORM_EPS", "1e-6"], "ft_few": ["VIT.NORM_EPS", "1e-6"],
             "probe_few": ["VIT.NORM_EPS", "1e-6", "VIT.FINAL_NORM", "False"]}
RESUME_PERIOD = 50  # epochs between a long pretraining's checkpoints (1,250 steps on the demo set)
NAMES = {"pixels": "raw pixels", "scratch": "random init", "diffmae": "DiffMAE", "mae": "MAE", "ldae": "l-DAE"}
COLORS = {"scratch": "0.6", "diffmae": "C1", "mae": "C2", "ldae": "C3"}  # one colour per method in every figure
# variants take the rest of the default cycle in order, skipping C7 (grey), which reads as random init's grey
VARIANT_COLORS = ["C4", "C5", "C6", "C8", "C9", "C0"]
PROTOCOLS = {"probe_full": "probe, all labels", "ft_full": "fine-tune, all labels",
             "ft_few": "fine-tune, k per class", "probe_few": "probe, k per class"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=sorted(PRETRAIN_CFGS), default="images")
    parser.add_argument("--epochs", type=int, default=100, help="pretraining epochs (25 steps each on the demo set)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", choices=sorted(PRETRAIN_CFGS["images"]),
                        default=["diffmae", "mae", "ldae"])
    parser.add_argument("--data", default="demo_data", help="the demo data folder (tools/make_demo_data.py)")
    parser.add_argument("--labels-per-class", type=int, default=5)
    parser.add_argument("--protocols", nargs="+", choices=sorted(DOWNSTREAM_CFGS), default=list(DOWNSTREAM_CFGS),
                        help="downstream protocols to run (the all-label probe always comes with the pretraining)")
    parser.add_argument("--no-scratch", action="store_true",
                        help="skip the random-init downstream cells (a variant study reads them from the main one)")
    parser.add_argument("--pretrain-opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides for every pretraining of this study (a variant: use its own --out)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--report-only", action="store_true", help="only read finished cells and write the report")
    parser.add_argument("--with-variant", nargs=2, action="append", default=[], metavar=("LABEL", "DIR"),
                        help="add a variant study's (--out DIR) method to the report as a column named LABEL")
    args = parser.parse_args(argv)
    if len(args.pretrain_opts) % 2:
        parser.error(f"--pretrain-opts takes KEY VALUE pairs; got {len(args.pretrain_opts)} words: "
                     f"{' '.join(args.pretrain_opts)}")
    return args


class Study:
    """The grid of cells of one comparison; ``run`` fills it, ``results`` reads what is finished."""

    def __init__(self, args):
        self.args = args
        self.data_dir = os.path.join(args.data, "images") if args.kind == "images" else args.data
        self.cells = {}

    def pretrain_dir(self, method: str, seed: int) -> str:
        return os.path.join(self.args.out, f"{method}_s{seed}")

    def downstream_dir(self, init: str, protocol: str, seed: int) -> str:
        return os.path.join(self.args.out, f"{protocol}_{init}_s{seed}")

    def command(self, script: str, cfg: str, seed: int, output_dir: str, extra=()) -> list:
        keys = ["DATA.PATH_TO_DATA_DIR", self.data_dir, "RNG_SEED", str(seed), "TENSORBOARD.ENABLE", "False"]
        return [script, "--cfg", cfg, *keys, *extra, "OUTPUT_DIR", output_dir]

    def pretrain_command(self, method: str, seed: int) -> list:
        # A checkpoint every RESUME_PERIOD epochs: a killed long pretraining resumes from it (the same command,
        # TRAIN.AUTO_RESUME) instead of starting over; the last epoch is always saved.
        period = str(min(self.args.epochs, RESUME_PERIOD))
        return self.command("tools/pretrain_study.py", PRETRAIN_CFGS[self.args.kind][method], seed,
                            self.pretrain_dir(method, seed),
                            ["--sample-steps", "50", "SOLVER.MAX_EPOCH", str(self.args.epochs),
                             "TRAIN.CHECKPOINT_PERIOD", period, *self.args.pretrain_opts])

    def downstream_command(self, init: str, protocol: str, seed: int) -> list:
        extra = list(IMAGE_KEYS) if self.args.kind == "images" else []
        extra += ["DATA.LABELS_SEED", str(seed)]
        if protocol != "ft_full":
            extra += ["DATA.LABELS_PER_CLASS", str(self.args.labels_per_class)]
        if init != "scratch":
            checkpoint = os.path.join(self.pretrain_dir(init, seed), "checkpoints",
                                      f"checkpoint_epoch_{self.args.epochs:05d}.pyth")
            extra += ["TRAIN.CHECKPOINT_FILE_PATH", checkpoint] + (LDAE_KEYS[protocol] if init == "ldae" else [])
        return self.command("tools/run_net.py", DOWNSTREAM_CFGS[protocol], seed,
                            self.downstream_dir(init, protocol, seed), extra)

    def tokenizer_commands(self) -> list:
        """fit_pca for an l-DAE config whose PCA file is missing (the pretraining would refuse to start).

        The fit reads --pretrain-opts too, so a variant of the tokenizer (say ``LDAE.TOKENIZER_SCOPE frame`` with its
        own ``LDAE.TOKENIZER_FILE``) gets its own PCA.
        """
        cfg, opts = PRETRAIN_CFGS[self.args.kind]["ldae"], list(self.args.pretrain_opts)
        if "ldae" not in self.args.methods or os.path.exists(os.path.join(ROOT, pca_file(cfg, opts))):
            return []
        return [["tools/fit_pca.py", "--cfg", cfg, "--num-patches", "200000", "DATA.PATH_TO_DATA_DIR", self.data_dir,
                 *opts]]

    def plan(self) -> list:
        """(cell name, command, result file) in running order: a seed's pretraining, then its downstream cells."""
        cells = [(f"fit_pca_{i}", c, None) for i, c in enumerate(self.tokenizer_commands())]
        for seed in self.args.seeds:
            for method in self.args.methods:
                out = self.pretrain_dir(method, seed)
                cells.append((f"pretrain_{method}_s{seed}", self.pretrain_command(method, seed),
                              os.path.join(out, "study.json")))
            for init in self.inits():
                for protocol in self.args.protocols:
                    out = self.downstream_dir(init, protocol, seed)
                    cells.append((f"{protocol}_{init}_s{seed}", self.downstream_command(init, protocol, seed),
                                  os.path.join(out, "json_stats.log")))
        return cells

    def inits(self) -> list:
        """Encoders that go downstream: the pretrained methods, after random init unless --no-scratch."""
        return list(self.args.methods) if self.args.no_scratch else ["scratch", *self.args.methods]

    def run(self) -> None:
        log = os.path.join(self.args.out, "walls.json")
        walls = {}
        if os.path.exists(log):
            with open(log) as f:
                walls = json.load(f)
        for name, command, result in self.plan():
            if result and done(result):
                continue
            print(f"\n== {name}\n$ python {' '.join(command)}", flush=True)
            tick = time.perf_counter()
            rc = subprocess.run([sys.executable, *command], cwd=ROOT).returncode
            walls[name] = round(time.perf_counter() - tick, 1)
            if rc:  # one failed cell (say, a bad checkpoint) must not cost the hours of the cells after it
                print(f"== {name} FAILED with exit status {rc}; its cells are left out of the report", flush=True)
                walls[name] = f"failed ({rc})"
            with open(log, "w") as f:
                json.dump(walls, f, indent=1)


def pca_file(cfg: str, opts=()) -> str:
    """LDAE.TOKENIZER_FILE of an l-DAE config with ``opts``, merged through _BASE_ as a run would read it."""
    return load_config(os.path.join(ROOT, cfg), list(opts)).LDAE.TOKENIZER_FILE


def done(result_file: str) -> bool:
    if result_file.endswith("study.json"):
        return os.path.exists(result_file)
    try:
        final_test_result(os.path.dirname(result_file))
        return True
    except (FileNotFoundError, LookupError):
        return False


def collect(study: Study) -> dict:
    """{init: {protocol: {seed: top-1 %}}} of every finished cell. probe_full is the logistic regression's val + test
    accuracy (200 items); there "scratch" is the random ViT of a DiffMAE / MAE study (an l-DAE's DiT at init folds
    to a linear patch embedding, so it stands in only when the study has no other method) and "pixels" raw pixels."""
    out = {}
    baseline = next((m for m in study.args.methods if m != "ldae"), study.args.methods[0])
    for seed in study.args.seeds:
        for method in study.args.methods:
            path = os.path.join(study.pretrain_dir(method, seed), "study.json")
            if os.path.exists(path):
                with open(path) as f:
                    probe = json.load(f)["probe"]
                out.setdefault(method, {}).setdefault("probe_full", {})[seed] = 100 * probe["pretrained"]["val_test_acc"]
                if method == baseline:  # the same random ViT and pixels in every study of one seed
                    out.setdefault("scratch", {}).setdefault("probe_full", {})[seed] = \
                        100 * probe["random_init"]["val_test_acc"]
                    out.setdefault("pixels", {}).setdefault("probe_full", {})[seed] = \
                        100 * probe["raw_pixels"]["val_test_acc"]
        for init in study.inits():
            for protocol in study.args.protocols:
                folder = study.downstream_dir(init, protocol, seed)
                if done(os.path.join(folder, "json_stats.log")):
                    out.setdefault(init, {}).setdefault(protocol, {})[seed] = final_test_result(folder)["top1_acc"]
    return out


def mean_std(values) -> tuple:
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def add_variants(results: dict, variants) -> None:
    """Read each (label, folder) variant study's results into ``results`` under its label."""
    for label, folder in variants:
        with open(os.path.join(folder, "results.json")) as f:
            report = json.load(f)
        methods = report["args"]["methods"]
        if len(methods) != 1:
            raise ValueError(f"{folder} compares {', '.join(methods)}; a variant column needs a study of one method")
        results[label] = {protocol: {int(seed): value for seed, value in seeds.items()}
                          for protocol, seeds in report["top1"].get(methods[0], {}).items()}


def columns(results: dict, args, baselines) -> list:
    """The report's columns in order: ``baselines``, the study's methods, then the --with-variant labels."""
    return [i for i in [*baselines, *args.methods, *(label for label, _ in args.with_variant)] if i in results]


def table(results: dict, args) -> str:
    inits = columns(results, args, ["pixels", "scratch"])
    header = "| protocol | " + " | ".join(NAMES.get(i, i) for i in inits) + " |"
    lines = [header, "|" + "---|" * (len(inits) + 1)]
    for protocol, label in PROTOCOLS.items():
        cells = [cell(results.get(init, {}).get(protocol, {})) for init in inits]
        lines.append(f"| {label.replace('k', str(args.labels_per_class))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cell(seeds: dict) -> str:
    """One table cell: mean ± std over the seeds finished, and how many; "–" when none is. One seed has no spread to
    show, so its cell is the value alone rather than a misleading "± 0.0"."""
    if not seeds:
        return "–"
    m, s = mean_std(seeds.values())
    return f"{m:.1f} (n=1)" if len(seeds) == 1 else f"{m:.1f} ± {s:.1f} (n={len(seeds)})"


def plot(results: dict, args, path: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 4))
    draw(ax, results, columns(results, args, ["scratch"]), args.labels_per_class)
    ax.set_title(f"demo {args.kind}: {args.epochs} pretraining epochs per method (bars: mean over seeds, dots: each "
                 f"seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw(ax, results: dict, inits: list, labels_per_class: int, variants=None) -> None:
    """Bars (mean over seeds, ± std) and dots (each seed) per protocol for each of ``inits``, on ``ax``.

    A variant's colour is its place in ``variants`` (default: its place among ``inits``); a figure of several panels
    passes every panel's variants so that one column keeps one colour throughout.
    """
    width = 0.8 / max(len(inits), 1)
    variants = variants or [init for init in inits if init not in COLORS]
    for j, init in enumerate(inits):
        xs, ms, ss, dots = [], [], [], []
        for i, protocol in enumerate(PROTOCOLS):
            seeds = results[init].get(protocol, {})
            if seeds:
                x = i - 0.4 + width * (j + 0.5)
                m, s = mean_std(seeds.values())
                xs.append(x), ms.append(m), ss.append(s), dots.extend((x, v) for v in seeds.values())
        ax.bar(xs, ms, width, yerr=ss, capsize=3, label=NAMES.get(init, init),
               color=COLORS.get(init) or VARIANT_COLORS[variants.index(init) % len(VARIANT_COLORS)])
        ax.scatter([d[0] for d in dots], [d[1] for d in dots], s=8, color="k", zorder=3)
    ax.axhline(10, color="k", lw=0.8, ls=":", label="chance")
    labels = [p.replace("k per", f"{labels_per_class} per") for p in PROTOCOLS.values()]
    ax.set_xticks(range(len(PROTOCOLS)), labels)
    ax.set_ylabel("top-1 (%)")
    ax.legend(fontsize=8, ncol=len(inits) + 1, loc="upper left")
    ax.set_ylim(0, 100)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    study = Study(args)
    if not args.report_only:
        study.run()
    results = collect(study)
    add_variants(results, args.with_variant)
    commands = {name: "python " + " ".join(command) for name, command, _ in study.plan()}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "top1": results, "commands": commands}, f, indent=1)
    text = table(results, args)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    plot(results, args, os.path.join(args.out, "compare.png"))
    print(text)


if __name__ == "__main__":
    main()
