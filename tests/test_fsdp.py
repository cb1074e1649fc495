"""TRAIN.PARALLEL fsdp: two CPU processes (gloo) train a tiny ViT with FSDP, save, resume; the checkpoint is the
file DDP and one process read; DDP resuming it trains as FSDP does; validation survives uneven shards."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from cli_helpers import ROOT, TINY_OPTS, env_for_subprocess, free_port, read_stats
from videodiff.config import ConfigError, load_config
from videodiff.engine.checkpoint import checkpoint_path
from videodiff.engine.fsdp import fsdp_unsupported, keyed_by_index, keyed_by_name

CFG = "configs/demo/vit_tiny_supervised.yaml"
# 2 blocks (2 FSDP units + the root); 3 val videos at 1 per rank per batch: rank 0 runs 1 batch, rank 1 runs 2.
OPTS = [*TINY_OPTS, "VIT.DEPTH", "2", "TEST.BATCH_SIZE", "2", "TEST.ENABLE", "False", "SOLVER.BASE_LR", "1e-3",
        "TRAIN.EVAL_PERIOD", "1"]
UNSUPPORTED = fsdp_unsupported("gloo")


def opts_for(data, out, epochs):
    return [*OPTS, "DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", out, "SOLVER.MAX_EPOCH", str(epochs)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Root of the worker's runs (tests/fsdp_worker.py): fsdp_full, fsdp_cut (resumed), ddp (from FSDP's file)."""
    if UNSUPPORTED:
        pytest.skip(f"TRAIN.PARALLEL fsdp cannot run on this torch build: {UNSUPPORTED}")
    from videodiff.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("fsdp")
    data = str(root / "data")
    make_demo_dataset(data, seed=0, num_train=8, num_val=3, num_test=1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
           os.path.join(ROOT, "tests", "fsdp_worker.py"), str(root), "--cfg", CFG,
           *OPTS, "DATA.PATH_TO_DATA_DIR", data]
    env = dict(env_for_subprocess(), CUDA_VISIBLE_DEVICES="")  # gloo on the CPU, even on a GPU machine
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def model_state(run_dir, epoch=2):
    return torch.load(checkpoint_path(str(run_dir), epoch), weights_only=True)


def test_fsdp_checkpoint_holds_the_weights_gathered_from_the_shards(runs):
    saved = model_state(runs / "fsdp_full")["model"]
    gathered = torch.load(runs / "fsdp_gathered.pt", weights_only=True)
    assert saved.keys() == gathered.keys()
    for key in gathered:
        assert torch.equal(saved[key], gathered[key]), key


def test_fsdp_checkpoint_loads_into_one_process_with_identical_weights(runs, tmp_path):
    from videodiff.engine.build import build_trainer
    from videodiff.engine.distributed import DistInfo

    out = str(tmp_path / "one")
    shutil.copytree(runs / "fsdp_full", out)
    trainer = build_trainer(load_config(CFG, opts_for(str(runs / "data"), out, 2)), DistInfo())
    assert trainer.start_epoch == 2
    gathered = torch.load(runs / "fsdp_gathered.pt", weights_only=True)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, gathered[key]), key
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert all(trainer.optimizer.state[p]["exp_avg"].shape == p.shape for p in params)  # each state on its own


def test_resumed_fsdp_run_ends_where_the_uninterrupted_one_does(runs):
    assert os.path.isfile(checkpoint_path(str(runs / "fsdp_cut"), 1))
    resumed, full = model_state(runs / "fsdp_cut"), model_state(runs / "fsdp_full")
    for key in full["model"]:
        torch.testing.assert_close(resumed["model"][key], full["model"][key], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(full["model"][k], model_state(runs / "fsdp_cut", 1)["model"][k]) for k in full["model"])


def test_ddp_resuming_an_fsdp_checkpoint_trains_as_fsdp_does(runs):
    """Same file layout (model and optimizer), same numbers: DDP continues the FSDP run to FSDP's own epoch 2."""
    ddp, full = model_state(runs / "ddp"), model_state(runs / "fsdp_full")
    assert ddp["model"].keys() == full["model"].keys()
    for key in full["model"]:
        torch.testing.assert_close(ddp["model"][key], full["model"][key], rtol=1e-4, atol=1e-5)
    assert ddp["optimizer"]["state"].keys() == full["optimizer"]["state"].keys()
    assert [g["params"] for g in ddp["optimizer"]["param_groups"]] == [
        g["params"] for g in full["optimizer"]["param_groups"]]
    for index, state in full["optimizer"]["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(ddp["optimizer"]["state"][index][name], value, rtol=1e-4, atol=1e-6)


def test_fsdp_validation_counts_every_video_when_ranks_run_different_batch_counts(runs):
    val = [s for s in read_stats(str(runs / "fsdp_full")) if s.get("split") == "val"]
    assert [s["epoch"] for s in val] == [1, 2]
    assert all(s["num_videos"] == 3 for s in val)


def test_optimizer_state_keyed_by_name_round_trips():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW([{"params": [model[0].weight, model[1].weight]},
                                   {"params": [model[0].bias, model[1].bias], "weight_decay": 0.0}])
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    named = keyed_by_name(state, [["0.weight", "1.weight"], ["0.bias", "1.bias"]])
    assert set(named["state"]) == {"0.weight", "1.weight", "0.bias", "1.bias"}
    assert named["state"]["1.bias"]["exp_avg"].shape == (2,)
    assert keyed_by_index(named) == state


@pytest.mark.parametrize("opts, says", [
    (["TRAIN.PARALLEL", "zero"], "expected one of ddp, fsdp"),
    (["TRAIN.PARALLEL", "fsdp", "MODEL_EMA.ENABLE", "True"], "does not support MODEL_EMA.ENABLE"),
])
def test_config_refuses_what_fsdp_cannot_do_in_one_line(opts, says):
    with pytest.raises(ConfigError) as error:
        load_config(CFG, opts)
    message = str(error.value)
    assert message.startswith("TRAIN.PARALLEL") and says in message and "\n" not in message


def test_config_refuses_fsdp_on_a_torch_without_it_naming_the_key(monkeypatch):
    import videodiff.config.validate as validate

    monkeypatch.setattr(validate, "fsdp_unsupported", lambda: "this torch has no fully_shard")
    with pytest.raises(ConfigError) as error:
        load_config(CFG, ["TRAIN.PARALLEL", "fsdp"])
    assert str(error.value) == ("TRAIN.PARALLEL (from command line) = 'fsdp' cannot run: this torch has no "
                                "fully_shard; use TRAIN.PARALLEL ddp")
    load_config(CFG, ["TRAIN.PARALLEL", "ddp"])  # DDP needs none of it
