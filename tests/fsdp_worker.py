"""Run by test_fsdp under torchrun (2 CPU processes, gloo): the runs whose files the test compares.

Usage: fsdp_worker.py ROOT --cfg CFG [OPTS...]. Under ROOT: ``fsdp_full`` trains 2 epochs with FSDP and also saves the
weights assembled shard by shard (``DTensor.full_tensor``, not the checkpoint helpers) to ``fsdp_gathered.pt``;
``fsdp_cut`` trains 1 epoch, then a second run resumes it to 2; ``ddp`` resumes FSDP's epoch-1 checkpoint with DDP.
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import videodiff  # noqa: E402,F401
from videodiff.config import load_config  # noqa: E402
from videodiff.engine.build import build_trainer  # noqa: E402
from videodiff.engine.checkpoint import checkpoint_path  # noqa: E402
from videodiff.engine.distributed import barrier, cleanup, init_distributed  # noqa: E402
from videodiff.engine.logging import setup_logging  # noqa: E402


def train(cfg_file, opts, out, epochs, parallel, info, gathered_to=""):
    """One run; the trainer (and a DDP wrapper holding the process group) is released on return."""
    cfg = load_config(cfg_file, [*opts, "OUTPUT_DIR", out, "SOLVER.MAX_EPOCH", str(epochs), "TRAIN.PARALLEL", parallel])
    setup_logging(out, info.is_main)
    trainer = build_trainer(cfg, info)
    trainer.train()
    if gathered_to:
        weights = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
                   for k, v in trainer.model.state_dict().items()}  # a collective: every rank assembles
        if info.is_main:
            torch.save(weights, gathered_to)


if __name__ == "__main__":
    root, cfg_file, opts = sys.argv[1], sys.argv[3], sys.argv[4:]
    info = init_distributed()
    assert info.world_size == 2, info
    train(cfg_file, opts, os.path.join(root, "fsdp_full"), 2, "fsdp", info, os.path.join(root, "fsdp_gathered.pt"))
    cut = os.path.join(root, "fsdp_cut")
    train(cfg_file, opts, cut, 1, "fsdp", info)
    train(cfg_file, opts, cut, 2, "fsdp", info)  # auto-resumes after epoch 1
    ddp = os.path.join(root, "ddp")
    if info.is_main:
        os.makedirs(os.path.join(ddp, "checkpoints"))
        shutil.copy(checkpoint_path(cut, 1), checkpoint_path(ddp, 1))
    barrier()
    train(cfg_file, opts, ddp, 2, "ddp", info)
    cleanup(wait_for_all=True)
