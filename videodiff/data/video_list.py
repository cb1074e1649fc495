"""Read a Kinetics-style list file: one ``path<SEP>label`` per line.

A bad list is reported in full at once: every malformed line with its 1-based line number, so a
user fixes the file in one pass instead of one error per run. The list is read as UTF-8 (a leading byte-order
mark is ignored); lines in another encoding are named by number in one line.
"""
import codecs
import os
import re
from typing import List, Optional, Tuple

from iopath.common.file_io import g_pathmgr

# Lines shown in a malformed-list error; the rest are counted.
_MAX_REPORTED = 10
# A byte that is not UTF-8, as ``errors="surrogateescape"`` decodes it.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


class VideoListError(ValueError):
    """The list file itself cannot be used: a folder, not UTF-8, malformed lines, or no entries."""


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
        VideoListError (a ValueError): the path is a folder, the text is not UTF-8 (the bad lines named by
            number), malformed lines (all of them listed, with line numbers) or an empty list.
    """
    if not g_pathmgr.exists(csv_path):
        raise FileNotFoundError(f"video list not found: {csv_path}")
    try:  # opening, not isdir(): remote PathHandlers need not implement isdir
        with g_pathmgr.open(csv_path, "rb") as f:
            lines = _decode_lines(f.read(), csv_path)
    except IsADirectoryError:
        raise VideoListError(f"{csv_path}: is a folder, not a video list file (expected a text file of "
                             f"'path{separator}label' lines)") from None
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
        raise VideoListError(_malformed_message(csv_path, problems, separator, num_classes))
    if not entries:
        raise VideoListError(f"{csv_path}: the video list is empty")
    return entries


def _decode_lines(data: bytes, csv_path: str) -> List[str]:
    """The lines of a UTF-8 list (split by ``str.splitlines``, as a text read does); a VideoListError naming
    every line that is not UTF-8, in one line of text."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        pass
    # Undecodable bytes become lone surrogates (U+DC80..U+DCFF), which valid UTF-8 never yields: they mark
    # the bad lines without shifting the line numbers.
    lines = data.decode("utf-8", errors="surrogateescape").splitlines()
    bad = [(number, match) for number, line in enumerate(lines, start=1)
           for match in [_ESCAPED_BYTE.search(line)] if match]
    number, match = bad[0]
    numbers = ", ".join(str(n) for n, _ in bad[:_MAX_REPORTED])
    more = f" and {len(bad) - _MAX_REPORTED} more" if len(bad) > _MAX_REPORTED else ""
    where = f"byte 0x{ord(match.group()) - 0xDC00:02x} at column {match.start() + 1}"
    what = f"line {numbers} is" if len(bad) == 1 else f"lines {numbers}{more} are"
    detail = where if len(bad) == 1 else f"line {number}: {where}"
    raise VideoListError(f"{csv_path}: {what} not UTF-8 text ({detail}); save the list as UTF-8")


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
