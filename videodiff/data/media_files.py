"""How media files are reached: local files by name, every other path through iopath's PathManager.

Remote storage plugs in by registering an iopath handler on the global manager, before building datasets::

    from iopath.common.file_io import g_pathmgr
    g_pathmgr.register_handler(MyStoreHandler())   # a PathHandler for "mystore://..."

List files (``video_list.py``), videos and images then resolve through it; nothing else in ``videodiff.data``
opens files. Local files are handed to decoders by name because decord and torchcodec read a named file
faster than a Python file object (about 10% on our benchmark).
"""
import os
from typing import BinaryIO, Type, Union

from iopath.common.file_io import g_pathmgr

from videodiff.data.media_errors import MediaError, VideoDecodeError

_FOLDER = "it is a directory, not a file"


def media_source(path: str, error: Type[MediaError] = VideoDecodeError) -> Union[str, BinaryIO]:
    """What to give a decoder for ``path``: the path itself when it is a local file, else an open binary
    file object from ``g_pathmgr`` (the caller closes it).

    A missing or zero-byte file, or a folder where a file should be (a folder named ``x.mp4`` or ``x.jpg``),
    raises ``error`` naming it: bad media like any other, skipped in training and a placeholder in val/test.
    """
    if os.path.isfile(path):
        if os.path.getsize(path) == 0:
            raise error(path, "the file is empty (0 bytes)")
        return path
    if os.path.isdir(path):
        raise error(path, _FOLDER)
    if not g_pathmgr.exists(path):
        raise error(path, "file not found")
    try:
        f = g_pathmgr.open(path, "rb")
    except IsADirectoryError:  # a folder in remote storage
        raise error(path, _FOLDER) from None
    if not f.read(1):
        f.close()
        raise error(path, "the file is empty (0 bytes)")
    f.seek(0)
    return f
