"""Errors for media files that cannot be read, and for data sets with too many of them.

A ``MediaError`` is about one file (missing, empty, truncated, not a video, undecodable): datasets catch it
and skip the file (see ``bad_media.py``). ``TooManyBadFiles`` stops the run: it is a ``ValueError`` so the
entry point reports it in one line, like other errors in the user's data.
"""
import re

# Source locations that decoders put in their messages ("[04:37:03] /src/video_reader.cc:151: ",
# "decode_av_frame, /src/SingleStreamDecoder.cpp:1493, "): noise in a warning meant for a user.
_SOURCE_LOCATION = re.compile(r"(\[[\d:]+\] )?(\w+, )?\S+\.(cc|cpp|c|h):\d+[:,] ")


def reason_of(error: BaseException) -> str:
    """A decoder exception as one short line for ``MediaError.reason``."""
    text = str(error).strip()
    lines = [_SOURCE_LOCATION.sub("", line).strip() for line in text.splitlines()] if text else []
    return next((line for line in lines if line), type(error).__name__)


class MediaError(RuntimeError):
    """One file could not be read; ``path`` names it and ``reason`` says why."""

    kind = "media file"

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: cannot read {self.kind}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):  # survive the trip from a DataLoader worker to the main process
        return (type(self), (self.path, self.reason))


class VideoDecodeError(MediaError):
    """A video could not be read: missing, empty, corrupt, not a video, or without the frames asked for."""

    kind = "video"


class ImageDecodeError(MediaError):
    """An image could not be read: missing, empty, truncated or not an image."""

    kind = "image"


class TooManyBadFiles(ValueError):
    """More files failed than ``DATA.MAX_RETRIES`` or ``DATA.MAX_FAILED_FRACTION`` allow."""
