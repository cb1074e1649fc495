"""Read a Kinetics-style list file: one ``path<SEP>label`` per line.

A bad list is reported in full at once: every malformed line with its 1-based line number, so a
user fixes the file in one pass instead of one error per run.
"""
import os
from typing import List, Optional, Tuple

from iopath.common.file_io import g_pathmgr

# Lines shown in a malformed-list error; the rest are counted.
_MAX_REPORTED = 10


def read_video_list(
    csv_path: str,
    path_prefix: str = "",
    separator: str = " ",
    num_classes: Optional[int] = None,
    base_dir: Optional[str] = None,
) -> List[Tuple[str, int]]:
    """Return ``[(video_path, label), ...]`` in file order.

    Args:
        csv_path: the list file (any path iopath's ``g_pathmgr`` can open).
        path_prefix: joined in front of every listed path (``os.path.join``; absolute listed paths stay
            as they are). When empty, relative paths are relative to ``base_dir``.
        separator: between path and label. A whitespace separator matches any run of whitespace;
            paths therefore cannot contain the separator (use e.g. ``,`` for such paths).
        num_classes: if given, labels must lie in ``[0, num_classes)``; otherwise they must be >= 0.
        base_dir: directory for relative paths when ``path_prefix`` is empty; default: the list's directory.

    Raises:
        FileNotFoundError: the list file does not exist.
        ValueError: malformed lines (all of them listed, with line numbers) or an empty list.
    """
    if not g_pathmgr.exists(csv_path):
        raise FileNotFoundError(f"video list not found: {csv_path}")
    with g_pathmgr.open(csv_path, "r") as f:
        lines = f.read().splitlines()
    root = path_prefix or (base_dir if base_dir is not None else _parent(csv_path))
    entries, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = _parse_line(line, separator, num_classes)
        if isinstance(parsed, str):
            problems.append(f"  line {number}: {line!r}: {parsed}")
        else:
            entries.append((os.path.join(root, parsed[0]), parsed[1]))
    if problems:
        raise ValueError(_malformed_message(csv_path, problems, separator, num_classes))
    if not entries:
        raise ValueError(f"{csv_path}: the video list is empty")
    return entries


def _parent(path: str) -> str:
    """The folder of ``path``, URIs included (``os.path.dirname("s3://list.csv")`` would drop a slash)."""
    if "://" in path:
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{os.path.dirname(rest)}"
    return os.path.dirname(path)


def _parse_line(line: str, separator: str, num_classes: Optional[int]):
    """``(path, label)`` for a good line, else a string saying what is wrong with it."""
    line = line.strip()
    fields = line.split() if separator.isspace() else [f.strip() for f in line.split(separator)]
    if len(fields) != 2:
        return f"expected 2 fields separated by {separator!r}, got {len(fields)}"
    path, label_text = fields
    try:
        label = int(label_text)
    except ValueError:
        return f"label {label_text!r} is not an integer"
    if label < 0 or (num_classes is not None and label >= num_classes):
        allowed = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        return f"label {label} is outside {allowed}"
    return path, label


def _malformed_message(csv_path: str, problems: List[str], separator: str, num_classes) -> str:
    shown = problems[:_MAX_REPORTED]
    more = len(problems) - len(shown)
    classes = f", label in [0, {num_classes})" if num_classes is not None else ""
    head = (f"{csv_path}: {len(problems)} malformed line(s) "
            f"(expected 'path{separator}label' with an integer label{classes}):")
    tail = [f"  ... and {more} more"] if more else []
    return "\n".join([head] + shown + tail)
