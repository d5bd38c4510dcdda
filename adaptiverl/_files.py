"""Every file adaptiverl writes goes through here: never through a symlink, never half-written.

* :func:`write_text` / :func:`write_bytes` / :func:`save_torch`: a whole file is written to a
  temporary file in the same folder, flushed to disk, then ``os.replace``\\ d over the name. A
  symlink at that name is replaced by the new file (the file it pointed to is left untouched),
  and a crash mid-write leaves the old file or the new one, never a torn one.
* :func:`append_text`: appending to an existing file opens it with ``O_NOFOLLOW``; a symlink at
  that name is refused with :class:`OutputPathError` naming it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class OutputPathError(OSError):
    """An output name the project would write through is a symlink (or otherwise not writable)."""


@contextlib.contextmanager
def _replacing(path: str | Path, mode: str) -> Iterator[IO[Any]]:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would have given; mkstemp's is 0o600
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` as the whole of ``path``: temporary file in the same folder + ``os.replace``."""
    with _replacing(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """:func:`write_bytes` of ``text`` encoded (UTF-8 by default)."""
    return write_bytes(path, text.encode(encoding))


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` as the whole of ``path``, the same way."""
    import torch

    with _replacing(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def open_for_append(path: str | Path) -> IO[bytes]:
    """``path`` opened to append (created if missing) and read back; a symlink there is refused
    with :class:`OutputPathError` naming it, never followed."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        if Path(path).is_symlink():
            raise OutputPathError(f"{path} is a symlink; adaptiverl does not append through one "
                                  "(remove it, or choose another output folder)") from None
        raise
    return os.fdopen(fd, "a+b")


def append_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Append ``text`` to ``path`` (created if missing); a symlink there is refused, not followed."""
    with open_for_append(path) as fh:
        fh.write(text.encode(encoding))
