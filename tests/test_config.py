"""Config loading: _BASE_ inheritance, overrides, and one clear line for every kind of bad key or value."""
import glob
import os

import pytest

from videodiff.config import ConfigError, load_config


def write(path, text):
    path.write_text(text)
    return str(path)


def test_base_inheritance_child_overrides_parent(tmp_path):
    write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LR: 0.5\n  MAX_EPOCH: 7\nVIT:\n  DEPTH: 3\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\nSOLVER:\n  BASE_LR: 0.25\n")
    cfg = load_config(child)
    assert cfg.SOLVER.BASE_LR == 0.25  # child wins
    assert cfg.SOLVER.MAX_EPOCH == 7  # inherited
    assert cfg.VIT.DEPTH == 3


def test_command_line_overrides_win_and_are_typed(tmp_path):
    child = write(tmp_path / "c.yaml", "SOLVER:\n  BASE_LR: 0.25\n")
    cfg = load_config(child, ["SOLVER.BASE_LR", "1e-3", "SOLVER.BETAS", "[0.9,0.999]", "TRAIN.AUTO_RESUME",
                              "False", "OUTPUT_DIR", "out/run"])
    assert cfg.SOLVER.BASE_LR == pytest.approx(1e-3)
    assert cfg.SOLVER.BETAS == [0.9, 0.999]
    assert cfg.TRAIN.AUTO_RESUME is False
    assert cfg.OUTPUT_DIR == "out/run"


def test_yaml_float_without_dot_is_accepted(tmp_path):
    # YAML 1.1 reads 1e-4 as a string; users write it anyway.
    cfg = load_config(write(tmp_path / "c.yaml", "SOLVER:\n  BASE_LR: 1e-4\n"))
    assert cfg.SOLVER.BASE_LR == pytest.approx(1e-4)


def test_unknown_key_in_base_file_names_that_file(tmp_path):
    write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LRR: 0.5\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"unknown config key SOLVER\.BASE_LRR \(from .*base\.yaml\).*BASE_LR"):
        load_config(child)


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match=r"unknown config key TRAIN\.NOPE \(from command line\)"):
        load_config(None, ["TRAIN.NOPE", "1"])


def test_wrong_type_names_key_source_and_expected_type(tmp_path):
    path = write(tmp_path / "c.yaml", "VIT:\n  DEPTH: deep\n")
    with pytest.raises(ConfigError, match=r"VIT\.DEPTH \(from .*c\.yaml\): expected int"):
        load_config(path)


@pytest.mark.parametrize("opts, pattern", [
    (["VIT.DEPTH", "0"], r"VIT\.DEPTH .* expected an integer >= 1"),
    (["SOLVER.OPTIMIZING_METHOD", "lamb"], r"SOLVER\.OPTIMIZING_METHOD .* one of adamw, sgd"),
    (["DATA.TRAIN_CROP_SIZE", "280"], r"DATA\.TRAIN_CROP_SIZE .* not divisible by VIT\.PATCH_SIZE = 16.*272, 288"),
    (["DATA.NUM_FRAMES", "15"], r"DATA\.NUM_FRAMES .* not divisible by VIT\.TEMPORAL_PATCH_SIZE"),
    (["SOLVER.BETAS", "[0.9]"], r"SOLVER\.BETAS .* two numbers"),
    (["VIT.NUM_HEADS", "5"], r"VIT\.EMBED_DIM .* not divisible by VIT\.NUM_HEADS"),
    (["DATA.MEAN", "[0.5]"], r"DATA\.MEAN .* VIT\.IN_CHANNELS"),
    (["VIT.DROP_PATH_RATE", "1.5"], r"VIT\.DROP_PATH_RATE .* \[0, 1\)"),
])
def test_impossible_values_are_refused(opts, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, opts)


def test_odd_number_of_overrides():
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["SOLVER.BASE_LR"])


def test_missing_file_and_missing_base(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    child = write(tmp_path / "child.yaml", "_BASE_: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone\.yaml \(the _BASE_ of .*child\.yaml\)"):
        load_config(child)


def test_base_loop_is_detected(tmp_path):
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(str(tmp_path / "a.yaml"))


def test_group_key_cannot_be_set_to_a_scalar():
    with pytest.raises(ConfigError, match="is a group of keys"):
        load_config(None, ["SOLVER", "1"])


def test_loaded_config_is_frozen():
    cfg = load_config(None, [])
    with pytest.raises(AttributeError):
        cfg.SOLVER.BASE_LR = 1.0


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*", "*.yaml"))))
def test_shipped_configs_load(path):
    load_config(path)


@pytest.mark.parametrize("opts, pattern", [
    (["MODEL.MODEL_NAME", "DifMAE"], r"MODEL\.MODEL_NAME \(from command line\) = 'DifMAE' is not a registered model; "
                                     r"choose one of .*DiffMAE.*VitClassifier"),
    (["TRAIN.DATASET", "kinetic"], r"TRAIN\.DATASET \(from command line\) = 'kinetic' .* one of kinetics, imagefolder"),
    (["DATA.DECODING_BACKEND", "ffmpeg"], r"DATA\.DECODING_BACKEND .* one of decord, pyav, torchcodec"),
    (["DIFFMAE.DECODER_TYPE", "crosss"], r"DIFFMAE\.DECODER_TYPE .* one of joint, cross, cross_self"),
])
def test_names_are_checked_against_their_registries_before_any_work(opts, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, opts)


def test_a_newly_registered_choice_is_allowed_without_touching_validation(monkeypatch):
    from videodiff.models.decoder import DECODERS, JointDecoder

    with pytest.raises(ConfigError, match="DIFFMAE.DECODER_TYPE"):
        load_config(None, ["DIFFMAE.DECODER_TYPE", "joint2"])
    monkeypatch.setitem(DECODERS, "joint2", JointDecoder)
    assert load_config(None, ["DIFFMAE.DECODER_TYPE", "joint2"]).DIFFMAE.DECODER_TYPE == "joint2"


def test_model_rules_run_only_for_their_model():
    bad_decoder = ["DIFFMAE.DECODER_EMBED_DIM", "36", "DIFFMAE.DECODER_NUM_HEADS", "4"]  # 36 % 8 != 0
    for name in ("DiffMAE", "MAE"):
        with pytest.raises(ConfigError, match=r"DIFFMAE\.DECODER_EMBED_DIM .* not divisible by 8"):
            load_config(None, ["MODEL.MODEL_NAME", name] + bad_decoder)
    assert load_config(None, ["MODEL.MODEL_NAME", "VitClassifier"] + bad_decoder)  # not its keys
    with pytest.raises(ConfigError, match=r"DIFFMAE\.TARGET_SLICE .* VIT\.TEMPORAL_PATCH_SIZE - 1 = 1"):
        load_config(None, ["MODEL.MODEL_NAME", "DiffMAE", "DIFFMAE.TARGET_SLICE", "2"])
    with pytest.raises(ConfigError, match=r"VIT\.POS_EMBED .* MAE pretrains with sin-cos positions"):
        load_config(None, ["MODEL.MODEL_NAME", "MAE", "VIT.CLS_TOKEN", "True"])
    assert load_config(None, ["MODEL.MODEL_NAME", "VitClassifier", "VIT.CLS_TOKEN", "True"])


def test_a_section_given_twice_is_refused_naming_file_line_and_key(tmp_path):
    path = write(tmp_path / "c.yaml", "SOLVER:\n  BASE_LR: 0.1\nVIT:\n  DEPTH: 2\nSOLVER:\n  MAX_EPOCH: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml, line 5: SOLVER is given twice in the same section"):
        load_config(path)
    nested = write(tmp_path / "n.yaml", "SOLVER:\n  BASE_LR: 0.1\n  BASE_LR: 0.2\n")
    with pytest.raises(ConfigError, match=r"n\.yaml, line 3: BASE_LR is given twice"):
        load_config(nested)


def test_a_config_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("SOLVER:\n  BASE_LR: 0.1\n# r\u00e9glage\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml, line 3: not UTF-8 text"):
        load_config(str(path))
