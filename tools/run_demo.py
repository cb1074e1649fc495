#!/usr/bin/env python
"""The demo job, stage by stage, each stage the command a user would type (printed before it runs):

  1. make the demo data (real MNIST digits moving in H.264 clips; nothing downloaded)
  2. DiffMAE pretraining of a tiny ViT on the demo videos
  3. fine-tuning of the pretrained encoder (decoder dropped) -> multi-view test, top-1 in json_stats.log
  4. DDPM inpainting of masked validation clips -> PNG grids and an MP4 under OUT/pretrain/vis

Example:
  python tools/run_demo.py --data demo_data --out output/demo
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_CFG = "configs/demo/diffmae_tiny_demo.yaml"
FINETUNE_CFG = "configs/demo/diffmae_tiny_ft.yaml"


def stage(title: str, args) -> None:
    command = [sys.executable, *args]
    print(f"\n== {title}\n$ {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    print(f"== {title}: {time.perf_counter() - start:.0f} s", flush=True)


def newest_checkpoint(output_dir: str) -> str:
    found = sorted(glob.glob(os.path.join(output_dir, "checkpoints", "checkpoint_epoch_*.pyth")))
    if not found:
        raise SystemExit(f"no checkpoint in {output_dir}/checkpoints: did pretraining finish?")
    return found[-1]


def test_result(output_dir: str) -> dict:
    with open(os.path.join(output_dir, "json_stats.log")) as f:
        return [json.loads(line) for line in f if '"test_final"' in line][-1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo_data", help="demo data folder (made if missing)")
    parser.add_argument("--out", default="output/demo", help="output folder of the three stages")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    pretrain, finetune = os.path.join(args.out, "pretrain"), os.path.join(args.out, "finetune")
    data = ["DATA.PATH_TO_DATA_DIR", args.data]
    stage("demo data", ["tools/make_demo_data.py", "--out", args.data])
    stage("DiffMAE pretraining", ["tools/run_net.py", "--cfg", PRETRAIN_CFG, *data, "OUTPUT_DIR", pretrain])
    stage("fine-tuning + multi-view test", ["tools/run_net.py", "--cfg", FINETUNE_CFG, *data, "OUTPUT_DIR", finetune,
                                            "TRAIN.CHECKPOINT_FILE_PATH", newest_checkpoint(pretrain)])
    stage("DDPM inpainting figures", ["tools/visualize.py", "--cfg", PRETRAIN_CFG, "--steps", "100", *data,
                                      "OUTPUT_DIR", pretrain])
    result = test_result(finetune)
    print(f"\ndemo done in {time.perf_counter() - start:.0f} s: fine-tuned top-1 {result['top1_acc']:.1f}% "
          f"top-5 {result['top5_acc']:.1f}% on {result['num_videos']} test videos x "
          f"{result['views_per_video_expected']} views; figures in {os.path.join(pretrain, 'vis')}")


if __name__ == "__main__":
    main()
