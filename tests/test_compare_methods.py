"""tools/compare_methods.py: the grid of cells it runs, resuming, a failing cell, and the table / plot it reports."""
import json
import os
import subprocess
import sys
import types

import pytest
from cli_helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import compare_methods  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _study(tmp_path, *argv):
    args = compare_methods.parse_args(["--out", str(tmp_path), *argv])
    return compare_methods.Study(args)


def _value(command, key):
    return command[command.index(key) + 1]


def test_plan_pretrains_each_seed_before_its_downstream_cells(tmp_path):
    study = _study(tmp_path, "--seeds", "0", "1", "--methods", "diffmae", "mae")
    names = [name for name, _, _ in study.plan()]
    assert names[:2] == ["pretrain_diffmae_s0", "pretrain_mae_s0"]
    assert names.index("probe_few_mae_s0") < names.index("pretrain_diffmae_s1")
    # three downstream protocols from random init and from each method, per seed; no PCA fit without l-DAE
    assert len(names) == 2 * (2 + 3 * 3)
    assert not any(name.startswith("fit_pca") for name in names)


def test_downstream_cells_read_the_pretrained_checkpoint_and_the_few_labels(tmp_path):
    study = _study(tmp_path, "--seeds", "3", "--epochs", "7", "--labels-per-class", "2")
    cells = {name: command for name, command, _ in study.plan()}
    few = cells["ft_few_diffmae_s3"]
    assert _value(few, "TRAIN.CHECKPOINT_FILE_PATH") == \
        os.path.join(str(tmp_path), "diffmae_s3", "checkpoints", "checkpoint_epoch_00007.pyth")
    assert _value(few, "DATA.LABELS_PER_CLASS") == "2" and _value(few, "DATA.LABELS_SEED") == "3"
    assert "DATA.LABELS_PER_CLASS" not in cells["ft_full_diffmae_s3"]
    assert "TRAIN.CHECKPOINT_FILE_PATH" not in cells["ft_few_scratch_s3"]
    # images are one-frame clips for the video recipes; pretraining runs exactly --epochs epochs
    assert _value(few, "DATA.NUM_FRAMES") == "1" and _value(few, "DATA.PATH_TO_DATA_DIR") == "demo_data/images"
    assert _value(cells["pretrain_mae_s3"], "SOLVER.MAX_EPOCH") == "7"
    assert _value(cells["pretrain_mae_s3"], "TRAIN.CHECKPOINT_PERIOD") == "7"
    # a folded DiT encoder keeps DiT's LayerNorm eps; its probe has no final norm (the DiT half has none)
    assert _value(cells["ft_full_ldae_s3"], "VIT.NORM_EPS") == "1e-6"
    assert _value(cells["probe_few_ldae_s3"], "VIT.FINAL_NORM") == "False"
    assert "VIT.NORM_EPS" not in cells["probe_few_mae_s3"]


def test_a_variant_study_overrides_the_pretraining_and_runs_only_the_chosen_cells(tmp_path):
    study = _study(tmp_path, "--seeds", "0", "1", "--methods", "diffmae", "--no-scratch", "--protocols", "ft_full",
                   "--pretrain-opts", "DIFFUSION.RHO", "1.0", "MASK.RATIO", "0.6")
    cells = {name: command for name, command, _ in study.plan()}
    assert sorted(cells) == ["ft_full_diffmae_s0", "ft_full_diffmae_s1", "pretrain_diffmae_s0", "pretrain_diffmae_s1"]
    pretrain = cells["pretrain_diffmae_s1"]
    # after the study's own keys, so the variant wins; the output folder stays last
    assert _value(pretrain, "DIFFUSION.RHO") == "1.0" and _value(pretrain, "MASK.RATIO") == "0.6"
    assert pretrain.index("DIFFUSION.RHO") > pretrain.index("SOLVER.MAX_EPOCH") and pretrain[-2] == "OUTPUT_DIR"
    assert "DIFFUSION.RHO" not in cells["ft_full_diffmae_s1"]  # downstream recipes stay as they are


def test_a_long_pretraining_saves_checkpoints_to_resume_from(tmp_path):
    long = {name: command for name, command, _ in _study(tmp_path, "--epochs", "600").plan()}
    # a killed 15,000-step run auto-resumes from its newest checkpoint; the downstream cells read the last one
    assert _value(long["pretrain_ldae_s0"], "TRAIN.CHECKPOINT_PERIOD") == str(compare_methods.RESUME_PERIOD) == "50"
    assert _value(long["ft_full_ldae_s0"], "TRAIN.CHECKPOINT_FILE_PATH").endswith("checkpoint_epoch_00600.pyth")


def test_pretrain_opts_must_come_in_pairs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _study(tmp_path, "--pretrain-opts", "DIFFUSION.RHO", "1.0", "MASK.RATIO")
    assert "KEY VALUE pairs; got 3 words" in capsys.readouterr().err


def test_videos_use_the_video_configs_and_fit_a_missing_pca_first(tmp_path, monkeypatch):
    study = _study(tmp_path, "--kind", "videos", "--methods", "ldae")
    monkeypatch.setattr(compare_methods, "pca_file", lambda cfg, opts=(): "output/no_such_pca.pth")
    plan = study.plan()
    assert plan[0][1][:3] == ["tools/fit_pca.py", "--cfg", "configs/demo/ldae_tiny_videos.yaml"]
    assert _value(plan[1][1], "--cfg") == "configs/demo/ldae_tiny_videos.yaml"
    assert "DATA.NUM_FRAMES" not in plan[-1][1] and _value(plan[-1][1], "DATA.PATH_TO_DATA_DIR") == "demo_data"


def _finish(study, init, protocol, seed, top1):
    folder = study.downstream_dir(init, protocol, seed)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "json_stats.log"), "w") as f:
        f.write(json.dumps({"split": "train", "loss": 1.0}) + "\n")
        f.write(json.dumps({"split": "test_final", "top1_acc": top1}) + "\n")


def _finish_pretraining(study, method, seed, pretrained, random_init=30.0, pixels=20.0):
    folder = study.pretrain_dir(method, seed)
    os.makedirs(folder, exist_ok=True)
    probe = {"pretrained": {"val_test_acc": pretrained / 100}, "random_init": {"val_test_acc": random_init / 100},
             "raw_pixels": {"val_test_acc": pixels / 100}}
    with open(os.path.join(folder, "study.json"), "w") as f:
        json.dump({"probe": probe}, f)


def test_report_gives_mean_and_spread_over_seeds_and_marks_missing_cells(tmp_path):
    study = _study(tmp_path, "--seeds", "0", "1", "--methods", "ldae", "diffmae")
    for seed, value in ((0, 40.0), (1, 44.0)):
        _finish_pretraining(study, "diffmae", seed, value, random_init=30.0 + seed)
        _finish_pretraining(study, "ldae", seed, 35.0, random_init=19.0)  # a DiT at init: not the random baseline
        _finish(study, "scratch", "ft_few", seed, 20.0 + 2 * seed)
    _finish(study, "ldae", "ft_few", 0, 50.0)
    results = compare_methods.collect(study)
    assert results["diffmae"]["probe_full"] == {0: 40.0, 1: 44.0}
    assert results["scratch"]["probe_full"] == {0: 30.0, 1: 31.0}
    text = compare_methods.table(results, study.args)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert "42.0 ± 2.8 (n=2)" in rows["probe, all labels"]
    assert "21.0 ± 1.4 (n=2)" in rows["fine-tune, 5 per class"] and "| 50.0 (n=1) |" in rows["fine-tune, 5 per class"]
    assert "–" in rows["probe, 5 per class"]
    path = str(tmp_path / "compare.png")
    compare_methods.plot(results, study.args, path)
    assert open(path, "rb").read(8) == PNG_MAGIC


def test_a_variant_study_becomes_one_more_column_of_the_report(tmp_path):
    variant_dir = tmp_path / "rho1"
    variant = _study(variant_dir, "--seeds", "0", "1", "--methods", "diffmae", "--no-scratch")
    for seed, value in ((0, 36.0), (1, 40.0)):
        _finish_pretraining(variant, "diffmae", seed, value, random_init=30.0)
    compare_methods.main(["--out", str(variant_dir), "--seeds", "0", "1", "--methods", "diffmae", "--no-scratch",
                          "--report-only"])
    main_dir = tmp_path / "main"
    study = _study(main_dir, "--seeds", "0", "1", "--methods", "diffmae",
                   "--with-variant", "DiffMAE rho 1", str(variant_dir))
    for seed in (0, 1):
        _finish_pretraining(study, "diffmae", seed, 25.0, random_init=30.0)
    results = compare_methods.collect(study)
    compare_methods.add_variants(results, study.args.with_variant)
    assert results["DiffMAE rho 1"]["probe_full"] == {0: 36.0, 1: 40.0}
    lines = compare_methods.table(results, study.args).splitlines()
    assert lines[0].endswith("| DiffMAE | DiffMAE rho 1 |")
    assert lines[2].endswith("| 25.0 ± 0.0 (n=2) | 38.0 ± 2.8 (n=2) |")
    two_methods = _study(tmp_path / "both", "--methods", "diffmae", "mae")
    compare_methods.main(["--out", str(tmp_path / "both"), "--methods", "diffmae", "mae", "--report-only"])
    with pytest.raises(ValueError, match="needs a study of one method"):
        compare_methods.add_variants({}, [("x", two_methods.args.out)])


def test_run_skips_finished_cells_and_survives_a_failing_one(tmp_path, monkeypatch):
    study = _study(tmp_path, "--methods", "mae")
    _finish_pretraining(study, "mae", 0, 40.0)
    _finish(study, "scratch", "ft_full", 0, 60.0)
    started = []

    def fake_run(command, cwd):
        started.append(command[1])
        name = os.path.basename(_value(command, "OUTPUT_DIR"))
        return types.SimpleNamespace(returncode=3 if name == "ft_few_scratch_s0" else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    study.run()
    assert started == ["tools/run_net.py"] * 5  # 7 cells, 2 of them finished
    walls = json.load(open(tmp_path / "walls.json"))
    assert walls["ft_few_scratch_s0"] == "failed (3)" and isinstance(walls["probe_few_mae_s0"], float)
    assert not compare_methods.done(str(tmp_path / "ft_few_scratch_s0" / "json_stats.log"))


@pytest.mark.parametrize("lines", [[], [{"split": "train"}]])
def test_a_run_without_its_final_test_is_not_done(tmp_path, lines):
    with open(tmp_path / "json_stats.log", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    assert not compare_methods.done(str(tmp_path / "json_stats.log"))


def test_summary_puts_several_studies_in_one_table_and_one_figure(tmp_path, capsys):
    import compare_summary
    short = _study(tmp_path / "short", "--seeds", "0", "1", "--methods", "diffmae")
    for seed, value in ((0, 40.0), (1, 44.0)):
        _finish_pretraining(short, "diffmae", seed, value, random_init=30.0)
        for protocol, top1 in (("ft_full", 60.0), ("ft_few", 30.0), ("probe_few", 20.0 + seed)):
            _finish(short, "diffmae", protocol, seed, top1)
            _finish(short, "scratch", protocol, seed, top1 - 10)
    compare_methods.main(["--out", str(tmp_path / "short"), "--seeds", "0", "1", "--methods", "diffmae",
                          "--report-only"])
    long = _study(tmp_path / "long", "--epochs", "600", "--methods", "mae")
    _finish_pretraining(long, "mae", 0, 50.0)
    compare_methods.main(["--out", str(tmp_path / "long"), "--epochs", "600", "--methods", "mae", "--report-only"])
    out = tmp_path / "docs" / "summary.png"
    compare_summary.main(["--study", "images, 2,500 steps", str(tmp_path / "short"),
                          "--study", "images, 15,000 steps", str(tmp_path / "long"), "--out", str(out)])
    lines = open(tmp_path / "docs" / "summary.md").read().splitlines()
    assert lines[0] == "| study | protocol | raw pixels | random init | DiffMAE | MAE |"
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in lines[2:]}
    assert rows[("images, 2,500 steps", "probe, all labels")].endswith("| 42.0 ± 2.8 (n=2) | – |")
    assert rows[("images, 2,500 steps", "probe, 5 per class")].endswith("| 20.5 ± 0.7 (n=2) | – |")
    # the mean of the four protocols where all four are finished: random init (30 + 50 + 20 + 10.5) / 4,
    # DiffMAE (42 + 60 + 30 + 20.5) / 4
    assert rows[("images, 2,500 steps", "**mean of the four**")].endswith("| **27.6** | **38.1** | – |")
    assert rows[("images, 15,000 steps", "probe, all labels")].endswith("| 30.0 (n=1) | – | 50.0 (n=1) |")
    assert rows[("images, 15,000 steps", "**mean of the four**")].endswith("| – | – | – | – |")
    assert open(out, "rb").read(8) == PNG_MAGIC and "| study |" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="compare_methods.py"):
        compare_summary.load(str(tmp_path / "no_study"))


def test_summary_gives_each_column_one_colour_in_every_panel(tmp_path, monkeypatch):
    """A variant that appears in two studies, in different places among their columns, keeps its colour."""
    import compare_summary
    from matplotlib.colors import to_rgba
    from matplotlib.container import BarContainer
    cells = {"probe_full": {0: 30.0}}
    first = ({"scratch": cells, "rho1": cells}, ["pixels", "scratch", "rho1"], 5)
    second = ({"scratch": cells, "equal FLOPs": cells, "rho1": cells}, ["pixels", "scratch", "equal FLOPs", "rho1"], 5)
    figures = []
    monkeypatch.setattr(compare_summary.plt, "close", figures.append)
    compare_summary.figure([("short", first), ("long", second)], str(tmp_path / "summary.png"))
    colours = [{c.get_label(): c.patches[0].get_facecolor() for c in ax.containers if isinstance(c, BarContainer)}
               for ax in figures[0].axes]
    assert colours[0]["rho1"] == colours[1]["rho1"] == to_rgba("C4")
    assert colours[1]["equal FLOPs"] == to_rgba("C5")
    assert colours[0]["random init"] == colours[1]["random init"] == to_rgba(compare_methods.COLORS["scratch"])


def test_variant_colours_are_distinct_and_never_grey_like_random_init():
    """The fourth variant once drew in C7, a grey next to random init's grey (the session-11 summary figure)."""
    from matplotlib.colors import to_rgb
    from matplotlib.container import BarContainer
    cells = {"probe_full": {0: 30.0}}
    inits = ["scratch", "ldae", "v1", "v2", "v3", "v4", "v5"]
    fig, ax = compare_methods.plt.subplots()
    compare_methods.draw(ax, {init: cells for init in inits}, inits, 5)
    colours = {c.get_label(): to_rgb(c.patches[0].get_facecolor()) for c in ax.containers
               if isinstance(c, BarContainer)}
    compare_methods.plt.close(fig)
    assert len(set(colours.values())) == len(inits)
    assert all(len(set(colours[v])) > 1 for v in ("v1", "v2", "v3", "v4", "v5"))  # r = g = b is a grey


def test_a_tokenizer_variant_fits_its_own_pca_with_the_variant_keys(tmp_path):
    frame_file = str(tmp_path / "pca_frames.pth")
    opts = ["LDAE.TOKENIZER_SCOPE", "frame", "LDAE.TOKENIZER_FILE", frame_file]
    study = _study(tmp_path, "--kind", "videos", "--methods", "ldae", "--no-scratch", "--pretrain-opts", *opts)
    assert compare_methods.pca_file(compare_methods.PRETRAIN_CFGS["videos"]["ldae"], opts) == frame_file
    fit, pretrain = study.plan()[:2]
    assert fit[1][:3] == ["tools/fit_pca.py", "--cfg", "configs/demo/ldae_tiny_videos.yaml"]
    assert fit[1][-4:] == opts and pretrain[1][-6:-2] == opts
    open(frame_file, "w").close()  # fitted: the plan goes straight to the pretraining
    assert study.plan()[0][1][0] == "tools/pretrain_study.py"
