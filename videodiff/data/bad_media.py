"""What a dataset item does when its file cannot be read (a ``MediaError``): nothing is lost, nothing is None.

Train: the item retries another randomly chosen sample, at most ``DATA.MAX_RETRIES`` times, and carries the
files it skipped as ``item["skipped"] = [(path, reason), ...]``; the collate gathers them into the batch and
``videodiff/engine/media_hook.py`` reports them. DataLoader workers are separate processes, so the record
travels with the data instead of living in dataset state.

Val/test: the item is a zero clip of the usual shape flagged ``item["valid"] = False``, with its file in
``skipped``; the evaluator leaves that video out of the metrics and counts it.

Either way, more failures than ``DATA.MAX_FAILED_FRACTION`` of the files stop the run with ``TooManyBadFiles``.
"""
from typing import Callable, Dict, Sequence

import torch

from videodiff.data.media_errors import MediaError, TooManyBadFiles


def item_with_retries(load: Callable[[int], dict], index: int, num_items: int, max_retries: int,
                      make_rng: Callable[[], torch.Generator]) -> dict:
    """``load(index)``; on a MediaError, ``load`` of a random other index, up to ``max_retries`` times, drawn
    from ``make_rng()`` (called on the first failure only). The returned item has ``skipped``: the
    ``(path, reason)`` of every file that failed on the way."""
    skipped, rng = [], None
    for _ in range(max_retries + 1):
        try:
            item = load(index)
        except MediaError as e:
            skipped.append((e.path, e.reason))
            rng = rng or make_rng()
            index = int(torch.randint(num_items, (1,), generator=rng))
            continue
        item["skipped"] = skipped
        return item
    path, reason = skipped[-1]
    raise TooManyBadFiles(
        f"{len(skipped)} files in a row could not be read (DATA.MAX_RETRIES = {max_retries}); the last was "
        f"{path}: {reason}. Check DATA.PATH_TO_DATA_DIR / DATA.PATH_PREFIX and the files themselves")


def placeholder_item(shape: Sequence[int], label: int, index: int, view: int, error: MediaError,
                     dtype: torch.dtype = torch.float32) -> dict:
    """A zero clip standing in for an unreadable val/test view; ``valid`` False keeps it out of metrics.
    ``dtype``: the dataset's handover (uint8 or float32), so it collates with the batch's other clips."""
    return {"clip": torch.zeros(shape, dtype=dtype), "label": label, "index": index, "view": view, "valid": False,
            "skipped": [(error.path, error.reason)]}


def check_failed_fraction(num_failed: int, num_total: int, max_fraction: float, what: str,
                          where: str = "the warnings above name them") -> None:
    """Raise TooManyBadFiles when more than ``max_fraction`` of ``num_total`` ``what`` failed."""
    if num_total and num_failed / num_total > max_fraction:
        raise TooManyBadFiles(
            f"{num_failed} of {num_total} {what} ({100 * num_failed / num_total:.1f}%) could not be read, more "
            f"than DATA.MAX_FAILED_FRACTION = {max_fraction} allows; {where}")


def drop_unreadable(batch: dict, failed: Dict[int, str]) -> dict:
    """The batch without its val/test placeholders; adds ``{video index: path}`` of those to ``failed``.

    Val/test items never retry, so each placeholder carries exactly one ``skipped`` entry and valid items
    none: the batch's ``skipped`` list lines up with its invalid rows.
    """
    valid = batch.get("valid")
    if valid is None or bool(valid.all()):
        return batch
    videos = batch["index"][~valid].tolist()
    failed.update(zip(videos, [path for path, _ in batch["skipped"]]))
    rows = len(valid)
    return {key: value[valid] if torch.is_tensor(value) and value.dim() and len(value) == rows else value
            for key, value in batch.items()}
