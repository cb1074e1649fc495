#!/usr/bin/env python
"""bf16 / SDPA correctness against fp32: every SDPA backend (fp32 and bf16) against float64 attention, and ViT blocks
in bf16 autocast against strict fp32, forward and backward; one PASS / FAIL line each, with the tolerance
(videodiff/engine/precision_check.py states and explains them). The last line is ``precision_check=PASS`` or
``=FAIL``; the exit status is 0 when everything passes, 1 otherwise.

Defaults are ViT-L blocks on DiffMAE's fine-tuning tokens (1024 wide, 16 heads, 2 x 1568 tokens, 4 blocks).

Examples:
  python tools/check_precision.py                     # on the GPU (ViT-L sizes, a few seconds)
  python tools/check_precision.py --device cpu --dim 64 --heads 4 --tokens 64 --depth 2 --batch 2   # CPU self-test
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--depth", type=int, default=4, help="ViT blocks in the autocast check (default 4)")
    parser.add_argument("--dim", type=int, default=1024, help="width (default 1024, ViT-L)")
    parser.add_argument("--heads", type=int, default=16, help="attention heads (default 16)")
    parser.add_argument("--tokens", type=int, default=1568, help="tokens per clip (default 1568: 8x14x14)")
    parser.add_argument("--batch", type=int, default=2, help="clips (default 2)")
    args = parser.parse_args(argv)
    # After parsing, so that --help answers without the seconds torch and timm take to import.
    import torch

    from videodiff.engine.precision_check import run_precision_check

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch (use --device cpu for the CPU self-test)", file=sys.stderr)
        return 2
    ok = run_precision_check(torch.device(args.device), args.depth, args.dim, args.heads, args.tokens, args.batch)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
