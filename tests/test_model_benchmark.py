"""tools/benchmark.py model (--vs timm, --vs mae, --scaling), tools/check_precision.py and tools/gpu_check.sh on
tiny configs on the CPU. Speed is reported, never asserted: the checks are on what is printed and on the
comparisons being fair (same parameters, tokens and FLOPs as the reference)."""
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cli_helpers import ROOT, env_for_subprocess
from videodiff.config import load_config
from videodiff.engine import model_benchmark
from videodiff.engine.dry_run import count_flops
from videodiff.engine.model_benchmark import BenchOptions, largest_batch, mfu_line, peak_flops, run_model_benchmark
from videodiff.engine.model_compare import clip_as_image, compare_mae, count_params, timm_twin
from videodiff.engine.model_scaling import run_scaling
from videodiff.engine.precision_check import run_precision_check
from videodiff.models.build import build_model
from videodiff.models.masking import num_visible

BENCHMARK = f"{ROOT}/tools/benchmark.py"
# The demo ViT made smaller still: 2 blocks of width 32 on 4x32x32 clips (2x4x4 = 32 tokens).
SMALL = ["VIT.EMBED_DIM", "32", "VIT.DEPTH", "2", "VIT.NUM_HEADS", "2", "DATA.NUM_FRAMES", "4",
         "DATA.TRAIN_CROP_SIZE", "32", "DIFFMAE.DECODER_EMBED_DIM", "32", "DIFFMAE.DECODER_NUM_HEADS", "2"]
QUICK = BenchOptions(batch=2, warmup=1, repeats=2, steps=1, device="cpu")


def run_tool(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env_for_subprocess(), capture_output=True,
                          text=True, timeout=timeout)


def values(lines) -> dict:
    """{key: text} of the report's ``key=value`` lines."""
    return dict(re.match(r"(\w+)=(\S+)", line).groups() for line in lines if re.match(r"\w+=\S", line))


def variant_of(cfg_file, *extra):
    return lambda more: load_config(cfg_file, [*extra, *more])


def test_model_command_prints_throughput_memory_flops_and_no_mfu_on_the_cpu():
    proc = run_tool(BENCHMARK, "model", "--cfg", "configs/demo/diffmae_tiny.yaml", "--batch", "2", "--warmup", "1",
                    "--repeats", "2", "--steps", "1", *SMALL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = values(proc.stdout.splitlines())
    assert proc.stdout.startswith("model: DiffMAE,") and "device cpu, fp32" in proc.stdout
    assert found["batch"] == "2" and float(found["steps_per_s"]) > 0
    assert float(found["clips_per_s"]) == pytest.approx(2 * float(found["steps_per_s"]), rel=1e-2)
    assert float(found["peak_mem_mb"]) > 50 and "peak RSS" in proc.stdout  # the CPU number says what it is
    cfg = load_config("configs/demo/diffmae_tiny.yaml", SMALL)
    expected = count_flops(build_model(cfg), torch.randn(1, 3, 4, 32, 32), torch.zeros(1, dtype=torch.long))
    assert float(found["gflops_per_clip"]) == pytest.approx(expected, rel=1e-2)
    assert found["mfu"] == "n/a"


def test_flop_count_includes_attention_on_the_cpu():
    class Attention(torch.nn.Module):
        def forward(self, q, label):
            return F.scaled_dot_product_attention(q, q, q)

    q = torch.randn(2, 3, 128, 64)  # torch's counter knew only the CUDA kernels and counted this as 0
    assert count_flops(Attention(), q, None) * 1e9 == 3 * 2 * 128 * 128 * 64  # per clip: QK^T and PV, 3 heads


def test_model_benchmark_runs_the_act_checkpoint_config_and_reports_mfu_against_a_given_peak(capsys):
    cfg = load_config("configs/demo/diffmae_tiny_ft.yaml", SMALL + ["MODEL.ACT_CHECKPOINT", "True"])
    lines = run_model_benchmark(cfg, BenchOptions(batch=2, warmup=1, repeats=1, steps=1, device="cpu",
                                                  peak_tflops=1.0))
    assert capsys.readouterr().out.startswith("model: VitClassifier,") and "activation checkpointing" in lines[0]
    found = values(lines)
    gmacs, clips = float(found["gflops_per_clip"]), float(found["clips_per_s"])
    assert float(found["mfu"]) == pytest.approx(6 * gmacs * 1e9 * clips / 1e12, rel=2e-2)


def test_vs_timm_compares_equal_parameters_tokens_and_flops_and_ends_with_the_ratio():
    proc = run_tool(BENCHMARK, "model", "--cfg", "configs/demo/vit_tiny_supervised.yaml", "--vs", "timm",
                    "--batch", "2", "--warmup", "1", "--repeats", "2", "--steps", "1", *SMALL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio_vs_timm=\d+\.\d{3}", lines[-1]) and float(lines[-1].split("=")[1]) > 0
    assert re.fullmatch(r"cpu_ratio_vs_timm=\d+\.\d{3}  \(process CPU time\)", lines[-2])
    ours = re.search(r"ours: VitClassifier, (\d+) params, tokens (\d+), ([\d.]+) GMAC", proc.stdout).groups()
    timm = re.search(r"timm: VisionTransformer, (\d+) params, tokens (\d+), ([\d.]+) GMAC", proc.stdout).groups()
    assert ours == timm


@pytest.mark.parametrize("extra", [
    [],                                                                           # video: 2-frame tubelets
    ["DATA.NUM_FRAMES", "1", "VIT.TEMPORAL_PATCH_SIZE", "1"],                     # an image
    ["VIT.POS_EMBED", "learned", "VIT.CLS_TOKEN", "True", "DATA.TEST_CROP_SIZE", "32"],  # an imported layout
])
def test_timm_twin_has_exactly_our_classifier_parameter_count(extra):
    cfg = load_config("configs/demo/vit_tiny_supervised.yaml", SMALL + extra)
    ours, theirs = build_model(cfg), timm_twin(cfg)
    assert count_params(ours) == count_params(theirs.vit)
    assert type(ours.encoder.blocks[0]) is type(theirs.vit.blocks[0])  # the same Block class


def test_the_timm_image_holds_each_tubelet_as_one_patch_with_our_conv3d_weights():
    cfg = load_config("configs/demo/vit_tiny_supervised.yaml", SMALL)
    ours, theirs = build_model(cfg).encoder.patch_embed, timm_twin(cfg).vit.patch_embed
    theirs.proj.weight.data.copy_(ours.proj.weight.reshape(theirs.proj.weight.shape))
    theirs.proj.bias.data.copy_(ours.proj.bias)
    clip = torch.randn(2, 3, 4, 32, 32)
    t, h, w = ours.grid_size(clip.shape)
    mine = ours(clip).reshape(2, t, h, w, -1).permute(0, 2, 1, 3, 4).reshape(2, t * h * w, -1)  # to (h, t, w) order
    torch.testing.assert_close(theirs(clip_as_image(clip, 2)), mine, rtol=1e-4, atol=1e-5)


def test_vs_mae_ends_with_the_ratio_line(capsys):
    lines = compare_mae(variant_of("configs/demo/diffmae_tiny.yaml", *SMALL), QUICK)
    assert re.fullmatch(r"ratio_diffmae_vs_mae=\d+\.\d{3}", lines[-1]) and float(lines[-1].split("=")[1]) > 0
    assert lines[-1] in capsys.readouterr().out
    assert any(line.startswith("DiffMAE (Trainer.step)") for line in lines)
    assert any(line.startswith("MAE (Trainer.step)") for line in lines)


def test_scaling_table_shows_the_pretraining_encoder_on_the_visible_tokens_only():
    frames, sizes = [4, 8], [32]
    lines = run_scaling(variant_of("configs/demo/diffmae_tiny.yaml", *SMALL), QUICK, frames, sizes)
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[3:]]
    assert len(rows) == 2
    for row, f in zip(rows, frames):
        n = (f // 2) * (32 // 8) ** 2
        assert int(row["tokens N"]) == n and int(row["visible K"]) == num_visible(n, 0.9)
        assert float(row["PT enc GMAC"]) < float(row["FT enc GMAC"])
        assert float(row["PT enc act MB/clip"]) < float(row["FT enc act MB/clip"])
    assert float(rows[1]["FT enc GMAC"]) > float(rows[0]["FT enc GMAC"])  # more tokens, more work


def test_batch_auto_doubles_until_out_of_memory_or_the_cap(monkeypatch):
    cfg = load_config("configs/demo/diffmae_tiny.yaml", SMALL)
    model = build_model(cfg)
    assert largest_batch(cfg, model, torch.device("cpu"), 1, 4)[0] == 4

    real = model_benchmark.training_step

    def small_memory(cfg, model, batch, device):
        if batch["clip"].shape[0] > 2:
            raise torch.OutOfMemoryError("pretend")
        return real(cfg, model, batch, device)

    monkeypatch.setattr(model_benchmark, "training_step", small_memory)
    batch, how = largest_batch(cfg, model, torch.device("cpu"), 1, 64)
    assert batch == 2 and "4 ran out of memory" in how


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12),
                                        ("NVIDIA H100 PCIe", 756e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("NVIDIA GeForce RTX 4090", None)])
def test_mfu_uses_the_dense_bf16_peak_of_the_device(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda"), None)[0] == peak
    assert peak_flops(torch.device("cuda"), 100.0)[0] == 100e12  # --peak-tflops wins
    if peak:
        expected = 6 * 100e9 * 500 / peak  # 3 x 2 x 100 GMAC x 500 clips/s
        assert mfu_line(100.0, 500.0, torch.device("cuda"), None).startswith(f"mfu={expected:.3g} ")


def test_precision_check_passes_on_the_cpu_and_catches_a_broken_attention_kernel(monkeypatch, capsys):
    sizes = dict(depth=2, dim=32, heads=2, tokens=16, batch=2)
    assert run_precision_check(torch.device("cpu"), **sizes)
    assert capsys.readouterr().out.strip().endswith("precision_check=PASS")
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: real(q, k, v, scale=1.0, **kw))
    assert not run_precision_check(torch.device("cpu"), **sizes)  # a wrong softmax scale is caught
    out = capsys.readouterr().out
    assert "FAIL fp32_sdpa" in out and out.strip().endswith("precision_check=FAIL")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_check_says_in_one_line_that_it_needs_a_gpu():
    proc = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=ROOT, env=env_for_subprocess(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("gpu_check: no CUDA GPU")


def test_gpu_check_dry_runs_every_stage_on_the_cpu_and_summarises(tmp_path):
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--dry"], cwd=ROOT,
                          env=dict(env_for_subprocess(), OUT=str(tmp_path)), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = proc.stdout.split("== summary")[1]
    assert "precision_check=PASS" in summary and summary.strip().endswith(f"gpu_check: OK (logs in {tmp_path})")
    for stage in ("pretrain_vitl_16x224", "finetune_vitl_16x224", "finetune_vitl14_32x280_ckpt"):
        row = re.search(rf"^{stage}\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", summary, re.M)
        assert row, summary
    assert "activation checkpointing" in (tmp_path / "finetune_vitl14_32x280_ckpt.log").read_text()


@pytest.mark.parametrize("tool", [[BENCHMARK, "model", "--help"], [f"{ROOT}/tools/check_precision.py", "--help"]])
def test_tools_answer_help_with_an_example(tool):
    proc = run_tool(*tool, timeout=120)
    assert proc.returncode == 0 and "Example" in proc.stdout


def test_gpu_check_answers_help_with_an_example():
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "Example: OUT=" in proc.stdout and "--dry" in proc.stdout
