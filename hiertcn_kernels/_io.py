"""Atomic directory writes: a reader sees the old directory or the complete new one, never a half-written one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def saved_with_header(header: str, fmt: str) -> Callable[[Path], bool]:
    """Whether a directory holds a ``header`` JSON file whose ``"format"`` is ``fmt`` (a previous save)."""

    def check(path: Path) -> bool:
        try:
            return json.loads((path / header).read_text()).get("format") == fmt
        except (OSError, ValueError, AttributeError):  # missing, unreadable, not JSON, not an object
            return False

    return check


def always(path: Path) -> bool:
    """For directories only hiertcn writes into (its cache): whatever is there may be replaced."""
    return True


@contextlib.contextmanager
def atomic_directory(path, *, replaces: Callable[[Path], bool], kind: str = "a previous save"):
    """Yield an empty temporary directory next to ``path``; on success it replaces ``path`` by rename.

    An existing ``path`` is replaced only when it is an empty directory or ``replaces(path)`` is true
    (it is ``kind``); anything else raises ``FileExistsError`` before any write, so a mistyped path
    never deletes someone's files. On error the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    replaceable = path.is_dir() and (not any(path.iterdir()) or replaces(path))
    if (path.exists() or path.is_symlink()) and not replaceable:
        raise FileExistsError(f"{path} exists and is not {kind}: refusing to replace it (remove it, or save somewhere else)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(src: Path, dest: Path) -> None:
    """Rename ``src`` to ``dest``; an existing ``dest`` is moved aside first (rename cannot overwrite a directory)."""
    if dest.exists():
        trash = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
        os.rename(dest, trash / dest.name)
        os.rename(src, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(src, dest)
