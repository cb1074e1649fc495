#!/usr/bin/env python
"""videodiff's entry point: train and/or test one config.

Examples:
  python tools/run_net.py --cfg configs/demo/vit_tiny_supervised.yaml
  python tools/run_net.py --cfg configs/K400/diffmae_vitl.yaml OUTPUT_DIR out/run1 SOLVER.MAX_EPOCH 10
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
      tools/run_net.py --cfg configs/K400/diffmae_vitl.yaml
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import videodiff  # noqa: E402,F401  (installs the pytorchvideo compat shim first)
from videodiff.engine.launch import main  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="YAML config file")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE overrides (same as --opts)")
    args = parser.parse_args(argv)
    return args.cfg_file, list(args.overrides) + list(args.opts)


if __name__ == "__main__":
    cfg_file, opts = parse_args()
    sys.exit(main(cfg_file, opts))
