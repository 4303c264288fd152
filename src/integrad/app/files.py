"""Files written whole or not at all: atomic writes of bytes, JSON and tensors.

Each file goes to a temporary file in the same folder, is flushed to disk and renamed over its final name, so a
process killed at any moment leaves the old file or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The bytes go to a temporary file in the same folder, which is flushed to
    disk and renamed over ``path``; the folder entry is flushed as well.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes private files; results should get the permissions of any other file the user writes.
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """Atomically save a dict of tensors as ``.safetensors``."""
    from safetensors.torch import save

    clean, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        # safetensors refuses tensors that share storage (e.g. a view of another entry).
        if v.untyped_storage().data_ptr() in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        clean[k] = v
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, save(clean, metadata=meta))


def write_json(path: Path, obj: dict) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
