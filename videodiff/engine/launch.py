"""Run one job: load the config, join the process group, train and/or test, exit with a status.

Failures print one line with the reason (config errors before any work) and exit non-zero.
"""
import os
import sys
import traceback
from typing import Sequence

from iopath.common.file_io import g_pathmgr

from videodiff.config import ConfigError, dump_config, load_config
from videodiff.data.loader import per_rank_batch_size
from videodiff.engine.build import build_trainer
from videodiff.engine.distributed import barrier, cleanup, init_distributed
from videodiff.engine.dry_run import dry_run
from videodiff.engine.evaluate import prepare_test, run_test
from videodiff.engine.logging import log_to_file_only, logger, setup_logging
from videodiff.engine.preemption import Preempted
from videodiff.state_dicts import CheckpointError

# Errors whose message already says what is wrong and where: no traceback needed.
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, ValueError, FloatingPointError)


def check_run_paths(cfg) -> None:
    """Refuse a missing data folder or an unwritable output folder before any work is done."""
    needs_data = (cfg.TRAIN.ENABLE or cfg.TEST.ENABLE) and not cfg.TRAIN.DRY_RUN
    data_dir = cfg.DATA.PATH_TO_DATA_DIR
    if needs_data and not (data_dir and g_pathmgr.isdir(data_dir)):
        raise ConfigError(f"DATA.PATH_TO_DATA_DIR = {data_dir!r} is not a folder (it must hold the split lists "
                          f"train.csv / val.csv / test.csv, or train/ val/ image folders)")
    probe = os.path.join(cfg.OUTPUT_DIR, f".write_test.{os.getpid()}")
    try:
        g_pathmgr.mkdirs(cfg.OUTPUT_DIR)
        with g_pathmgr.open(probe, "w") as f:
            f.write("ok")
        g_pathmgr.rm(probe)
    except OSError as e:
        raise ConfigError(f"OUTPUT_DIR = {cfg.OUTPUT_DIR!r} cannot be written: {e.strerror or e}") from None


def run(cfg_file: str, opts: Sequence[str]) -> None:
    cfg = load_config(cfg_file, opts)
    if cfg.TRAIN.DRY_RUN:
        setup_logging(cfg.OUTPUT_DIR, is_main=True, to_file=False)
        dry_run(cfg)
        return
    check_run_paths(cfg)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # checked before joining the group: no hang
    for split in ("train", "test"):
        per_rank_batch_size(cfg, split, world_size)
    info = init_distributed()
    setup_logging(cfg.OUTPUT_DIR, info.is_main)
    logger.info(f"world size {info.world_size}, device {info.device}, output {cfg.OUTPUT_DIR}")
    trainer = build_trainer(cfg, info) if cfg.TRAIN.ENABLE else None
    test_job = prepare_test(cfg, info) if cfg.TEST.ENABLE and trainer is None else None
    # Only now, with model, data lists and checkpoints in hand: a run that cannot start leaves a finished run's
    # folder as it was.
    if info.is_main:
        dump_config(cfg, os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
    if trainer is not None:
        trainer.train()
        barrier()
    if cfg.TEST.ENABLE:
        run_test(cfg, info, test_job)


def main(cfg_file: str, opts: Sequence[str]) -> int:
    finished = False
    try:
        run(cfg_file, opts)
        finished = True
    except Preempted as e:
        print(e.message, file=sys.stderr)
        return 0
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        log_to_file_only(f"error: {e}")
        return 2
    except Exception:  # an unexpected one: its traceback goes to the console as usual, and to log.txt
        log_to_file_only(traceback.format_exc().rstrip())
        raise
    finally:
        cleanup(wait_for_all=finished)
    return 0
