"""Run by test_cli under torchrun: train like run_net, then save this rank's parameters for comparison."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import videodiff  # noqa: E402,F401
from videodiff.config import load_config  # noqa: E402
from videodiff.engine.checkpoint import unwrap  # noqa: E402
from videodiff.engine.distributed import cleanup, init_distributed  # noqa: E402
from videodiff.engine.logging import setup_logging  # noqa: E402
from videodiff.engine.build import train  # noqa: E402


def train_and_save(cfg, info) -> None:
    """Train and save this rank's parameters; the trainer (and its DDP wrapper, which holds the process
    group) is released on return, before the group is destroyed, as in launch.run."""
    trainer = train(cfg, info)
    torch.save(unwrap(trainer.model).state_dict(), os.path.join(cfg.OUTPUT_DIR, f"params_rank{info.rank}.pt"))


if __name__ == "__main__":
    cfg = load_config(sys.argv[2], sys.argv[3:])
    info = init_distributed()
    assert info.world_size == 2, info
    setup_logging(cfg.OUTPUT_DIR, info.is_main)
    train_and_save(cfg, info)
    cleanup(wait_for_all=True)
