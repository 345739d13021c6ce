"""Writing files so that nothing is lost: output paths checked before any work is done for
them, and atomic writes. A temporary file in the same folder is written, flushed and fsynced,
then renamed over the real name, so a crash mid-write leaves the previous file as it was; the
new file keeps the mode of the one it replaces (else what the umask leaves of rw-rw-rw-)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a place a file can be written, checked before any work is done for it:
    its folder exists and is writable, and it is not itself a folder."""
    path = Path(path)
    folder = path.parent  # Path(".") for a bare file name
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {path}: folder {folder} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give a file name")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"{what} {path}: not allowed to write there")
    return path


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place.
    The file gets the mode of the one it replaces, else what the umask leaves of rw-rw-rw-."""
    path = Path(path)
    folder = check_writable(path, "cannot save to").parent
    # Short enough for any file name the folder takes: .<start of the name>.<random>.tmp
    tmp = folder / f".{path.name[:64]}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            if path.exists():
                mode = path.stat().st_mode & 0o7777
                if hasattr(os, "fchmod"):
                    os.fchmod(f.fileno(), mode)
                else:  # Windows before Python 3.13 has no fchmod
                    os.chmod(tmp, mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
