"""Write a file so that its name never shows a partial file: the data goes to a temporary file in
the same directory, is flushed to disk, and only then replaces the file under its final name."""

import errno
import os
import tempfile
from typing import IO, Callable

__all__ = ["atomic_write", "publish"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX; Windows cannot open directories)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (network, FUSE) cannot sync a directory; the file is in place.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def publish(temporary: str, path: str) -> None:
    """Put the complete file ``temporary`` (in ``path``'s directory) at ``path``: flushed to disk,
    given a new file's mode (0666 less the umask; temporary files are 0600), renamed over
    ``path``, and the rename made durable. For writers that need a file name of their own (e.g.
    OpenCV's video writer); :func:`atomic_write` does the rest for everyone else."""
    with open(temporary, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, path)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def atomic_write(path: str, write: Callable[[IO], None], *, binary: bool = True) -> None:
    """Call ``write(f)`` on a new temporary file beside ``path``, then put the file at ``path``.

    Either ``path`` keeps what it held before (``write`` raised, or the process died: the
    temporary file ``.{name}.*.tmp`` may then remain beside it) or it holds everything ``write``
    wrote; never a part of it. The file gets the usual mode (0666 less the umask).

    Args:
        path: a local file path; its directory is created when missing.
        write: writes the content to the open file it is given.
        binary: open the temporary file in binary mode, else in text mode (UTF-8).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        publish(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
