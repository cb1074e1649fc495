"""The few-label protocol (DATA.LABELS_PER_CLASS, videodiff/data/few_labels.py) on lists, CSV lists and folders."""
import collections
import os

import pytest

from videodiff.config import ConfigError, load_config
from videodiff.data.build import build_dataset
from videodiff.data.few_labels import FewLabelsError, few_labels

# 10 classes x 8 entries, interleaved like a real list.
ENTRIES = [(f"videos/clip_{i:03d}.mp4", i % 10) for i in range(80)]


def _counts(entries):
    return collections.Counter(label for _, label in entries)


def test_subset_is_balanced_and_in_list_order():
    subset = few_labels(ENTRIES, 3, seed=0)
    assert _counts(subset) == {label: 3 for label in range(10)}
    assert subset == sorted(subset, key=ENTRIES.index)


def test_same_seed_gives_the_same_subset_whatever_the_list_order():
    reordered = list(reversed(ENTRIES))
    assert set(few_labels(ENTRIES, 3, seed=7)) == set(few_labels(reordered, 3, seed=7))
    assert few_labels(ENTRIES, 3, seed=7) == few_labels(ENTRIES, 3, seed=7)


def test_different_seeds_give_different_subsets():
    subsets = {tuple(few_labels(ENTRIES, 2, seed=seed)) for seed in range(5)}
    assert len(subsets) == 5


def test_smaller_k_is_part_of_larger_k():
    assert set(few_labels(ENTRIES, 2, seed=3)) <= set(few_labels(ENTRIES, 5, seed=3))


def test_zero_keeps_every_entry():
    assert few_labels(ENTRIES, 0, seed=0) == ENTRIES


def test_a_class_with_too_few_entries_is_one_line_naming_it():
    short = [e for e in ENTRIES if not (e[1] == 4 and e[0] > "videos/clip_040")]  # class 4 keeps 4 entries
    with pytest.raises(FewLabelsError) as info:
        few_labels(short, 5, seed=0, source="train.csv")
    message = str(info.value)
    assert "\n" not in message and "train.csv" in message and "class 4: 4" in message
    assert "DATA.LABELS_PER_CLASS = 5" in message


def _write_lists(root):
    """Kinetics-style lists; the files need not exist, the datasets only read the lists when built."""
    for split, count in (("train", 80), ("val", 20), ("test", 20)):
        with open(os.path.join(root, f"{split}.csv"), "w") as f:
            f.writelines(f"videos/{split}_{i:03d}.mp4 {i % 10}\n" for i in range(count))


def _cfg(root, *opts):
    return load_config("configs/demo/vit_tiny_supervised.yaml", ["DATA.PATH_TO_DATA_DIR", str(root), *opts])


def test_kinetics_train_list_is_cut_and_val_test_are_untouched(tmp_path):
    _write_lists(tmp_path)
    cfg = _cfg(tmp_path, "DATA.LABELS_PER_CLASS", "2", "DATA.LABELS_SEED", "1")
    train = build_dataset(cfg, "train").videos
    assert _counts(train) == {label: 2 for label in range(10)}
    held_out = set()
    for split in ("val", "test"):
        videos = build_dataset(cfg, split).videos
        assert len(videos) == 20
        held_out.update(path for path, _ in videos)
    assert not held_out & {path for path, _ in train}
    other_seed = build_dataset(_cfg(tmp_path, "DATA.LABELS_PER_CLASS", "2", "DATA.LABELS_SEED", "2"), "train")
    assert other_seed.videos != train


def test_image_folders_are_cut_per_class_folder(tmp_path):
    for split, per_class in (("train", 6), ("val", 3)):
        for label in range(3):
            folder = tmp_path / split / f"class_{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}.png").write_bytes(b"")  # not decoded when the dataset is built
    cfg = _cfg(tmp_path, "TRAIN.DATASET", "imagefolder", "TEST.DATASET", "imagefolder", "MODEL.NUM_CLASSES", "3",
               "DATA.NUM_FRAMES", "1", "VIT.TEMPORAL_PATCH_SIZE", "1", "DATA.LABELS_PER_CLASS", "4")
    assert _counts(build_dataset(cfg, "train").images) == {0: 4, 1: 4, 2: 4}
    assert len(build_dataset(cfg, "val").images) == 9


def test_a_kinetics_class_with_too_few_clips_stops_the_build(tmp_path):
    _write_lists(tmp_path)
    with pytest.raises(FewLabelsError, match="class 0: 8"):
        build_dataset(_cfg(tmp_path, "DATA.LABELS_PER_CLASS", "9"), "train")


@pytest.mark.parametrize("cfg_file", ["configs/demo/diffmae_tiny_demo.yaml", "configs/demo/mae_tiny.yaml",
                                      "configs/demo/ldae_tiny_images.yaml"])
def test_pretraining_without_labels_refuses_a_few_label_subset(cfg_file):
    with pytest.raises(ConfigError, match="DATA.LABELS_PER_CLASS.*trains without labels"):
        load_config(cfg_file, ["DATA.LABELS_PER_CLASS", "5"])


def test_class_conditional_ldae_trains_on_labels_and_may_use_few():
    cfg = load_config("configs/demo/ldae_tiny_images.yaml", ["DATA.LABELS_PER_CLASS", "5", "LDAE.CLASS_COND", "True"])
    assert cfg.DATA.LABELS_PER_CLASS == 5
