"""Generate the "moving digits" demo data set (see videodiff/data/demo.py)."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import videodiff  # noqa: E402,F401  (installs the compat shim before anything else)
from videodiff.data.demo import make_demo_dataset  # noqa: E402


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write the moving-digits demo set: H.264 clips of real MNIST digits with "
                    "Kinetics-format CSVs, plus first-frame PNGs in ImageNet folder layout. "
                    "Example: python tools/make_demo_data.py --out data/demo --seed 0",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same data set")
    parser.add_argument("--num-train", type=int, default=400, help="training clips")
    parser.add_argument("--num-val", type=int, default=100, help="validation clips")
    parser.add_argument("--num-test", type=int, default=100, help="test clips")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even if --out already holds this exact set")
    return parser.parse_args(argv)


def _size_mb(folder: str) -> float:
    total = 0
    for root, _, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
    return total / 2**20


def main(argv=None) -> None:
    args = _parse_args(argv)
    start = time.perf_counter()
    result = make_demo_dataset(args.out, seed=args.seed, num_train=args.num_train,
                               num_val=args.num_val, num_test=args.num_test, force=args.force)
    action = "reused" if result["reused"] else "wrote"
    print(f"{action} {args.out}: train {result['train']}, val {result['val']}, "
          f"test {result['test']} clips, {_size_mb(args.out):.1f} MB, "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
