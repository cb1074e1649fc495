"""The few-label protocol (DATA.LABELS_PER_CLASS): train on k labelled entries per class of the train list.

Fine-tuning and linear probing after self-supervised pretraining are judged on few labels: the pretraining saw
every clip without its label, the downstream run sees k labelled clips of each class. The subset is

- **balanced**: exactly k entries of every class present in the list (a class with fewer than k is an error,
  not a silently smaller class: an unbalanced subset would change what the number means);
- **deterministic**: drawn by DATA.LABELS_SEED alone, not by RNG_SEED, so runs that differ in initialisation or
  augmentation train on the same labels; within a class the draw depends only on the seed, the class and the set
  of its paths (not on the list order or on other classes), and the subsets of one seed are nested (k = 2 is part
  of k = 5);
- **train only**: val/test lists are never subsampled (the datasets apply this to the train split only).

It works on any ``[(path, label), ...]`` list: Kinetics-style CSV lists and ImageNet-style folders alike.
"""
import logging
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

Entry = Tuple[str, int]


class FewLabelsError(ValueError):
    """A class of the train list has fewer entries than DATA.LABELS_PER_CLASS asks for."""


def few_labels(entries: Sequence[Entry], per_class: int, seed: int, source: str = "train list") -> List[Entry]:
    """``per_class`` entries of every label in ``entries``, in their list order; all of them when ``per_class`` is 0.

    ``source`` names the list in the error and the log line. Raises FewLabelsError when a class has fewer than
    ``per_class`` entries.
    """
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0 (0 = every entry), got {per_class}")
    if per_class == 0:
        return list(entries)
    by_class = _positions_by_class(entries)
    _check_enough(by_class, per_class, source)
    chosen = set()
    for label, positions in by_class.items():
        chosen.update(_draw(entries, positions, per_class, seed, label))
    subset = [entries[i] for i in sorted(chosen)]
    logger.info(f"{source}: {len(subset)} of {len(entries)} entries, {per_class} per class of {len(by_class)} "
                f"(DATA.LABELS_PER_CLASS {per_class}, DATA.LABELS_SEED {seed})")
    return subset


def _positions_by_class(entries: Sequence[Entry]) -> Dict[int, List[int]]:
    by_class = defaultdict(list)
    for position, (_, label) in enumerate(entries):
        by_class[label].append(position)
    return dict(sorted(by_class.items()))


def _check_enough(by_class: Dict[int, List[int]], per_class: int, source: str) -> None:
    short = {label: len(positions) for label, positions in by_class.items() if len(positions) < per_class}
    if short:
        listed = ", ".join(f"class {label}: {n}" for label, n in list(short.items())[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        raise FewLabelsError(f"{source}: DATA.LABELS_PER_CLASS = {per_class}, but {len(short)} class(es) have fewer "
                             f"entries ({listed}{more}); lower it to {min(short.values())} or set 0 for all labels")


def _draw(entries: Sequence[Entry], positions: List[int], per_class: int, seed: int, label: int) -> List[int]:
    """The first ``per_class`` of the class's entries in a permutation seeded by (seed, label). Sorting by path first
    makes the draw independent of the list order; taking a prefix makes smaller k a subset of larger k."""
    by_path = sorted(positions, key=lambda i: entries[i][0])
    order = np.random.default_rng([seed, label]).permutation(len(by_path))
    return [by_path[i] for i in order[:per_class]]
