"""The prepared-dataset cache: build once, keyed by the source and every parameter.

``cache_key`` hashes the package version, the source's fingerprint and the
parameters, so a changed source, parameter or version gives a new key: a
stale entry is never returned for new inputs. ``build_cached`` builds an entry
in a temporary directory and renames it into place, so a half-built entry is
never visible (a crash leaves only a hidden ``.<key>.tmp-*`` directory).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hiertcn import __version__
from hiertcn_kernels._io import always, atomic_directory

# Files up to this size are hashed whole; larger ones by (size, mtime, first and last MiB).
FULL_HASH_LIMIT = 256 << 20
EDGE_BYTES = 1 << 20
MARKER = "cache.json"
# Part of every key: bump it when reading, presets, packing or splitting change what an entry holds, so
# entries built by older code are not served (2: ISO offsets and integral-decimal ids on the text pass,
# session counts of the preset report; 3: the user split's rounding, so a zero fraction gets no users;
# 4: presets filter once, as published, and hrnn-xing splits sessions at gaps > 1800 s; 5: auto time
# units per value, null tokens as missing ids, exact ids above 2**53; 6: sub-second order within a second,
# zero-padded ids kept as strings).
DATA_REVISION = 6

log = logging.getLogger(__name__)


def cache_key(source_path=None, **params) -> str:
    """A hex key for (hiertcn version, ``DATA_REVISION``, source, params).

    The source (a file, or a directory: every file in it) is fingerprinted by
    the SHA-256 of its bytes when at most ``FULL_HASH_LIMIT`` bytes, otherwise
    by size, modification time and the SHA-256 of its first and last MiB (a
    huge file edited in the middle without changing size or mtime is not
    noticed). ``params`` must be JSON-like (numbers, strings, bools, None,
    lists/tuples, dicts, paths, numpy scalars); their order does not matter.
    """
    payload = {
        "version": __version__,
        "revision": DATA_REVISION,
        "source": None if source_path is None else fingerprint(Path(source_path)),
        "params": params,
    }
    text = json.dumps(payload, sort_keys=True, default=_param_json)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def build_cached(cache_root, key: str, build_fn: Callable[[Path], object]) -> Path:
    """Return ``cache_root/key``, running ``build_fn(tmp_dir)`` first if no complete entry exists.

    ``build_fn`` writes the entry's files into the empty ``tmp_dir``; on success
    it is renamed to ``cache_root/key`` with a ``cache.json`` marker recording
    the key and hiertcn version. On error nothing is left behind. An entry made
    by another hiertcn version, or without a readable marker, is rebuilt.
    """
    if not isinstance(key, str) or not key or "/" in key or key.startswith("."):
        raise ValueError(f"key must be a non-empty file name not starting with '.', got {key!r}")
    entry = Path(cache_root) / key
    if entry.exists():
        stale = _why_stale(entry, key)
        if stale is None:
            return entry
        log.warning("cache entry %s %s; rebuilding it", entry, stale)
    with atomic_directory(entry, replaces=always) as tmp:
        build_fn(tmp)
        (tmp / MARKER).write_text(json.dumps({"key": key, "hiertcn_version": __version__}))
    return entry


def _why_stale(entry: Path, key: str) -> str | None:
    try:
        meta = json.loads((entry / MARKER).read_text())
    except (OSError, ValueError):
        return "has no readable marker (not written by build_cached)"
    if meta.get("key") != key:
        return f"is marked with another key ({meta.get('key')})"
    if meta.get("hiertcn_version") != __version__:
        return f"was made by hiertcn {meta.get('hiertcn_version')}, this is {__version__}"
    return None


def fingerprint(path: Path):
    """The content fingerprint ``cache_key`` uses for a source file or directory (JSON-like)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {str(p.relative_to(path)): _file_fingerprint(p) for p in files}
    if not path.is_file():
        raise FileNotFoundError(f"source_path {path} does not exist")
    return _file_fingerprint(path)


def _file_fingerprint(path: Path) -> dict:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(EDGE_BYTES), b""):
                digest.update(block)
            return {"size": size, "sha256": digest.hexdigest()}
        digest.update(f.read(EDGE_BYTES))
        f.seek(size - EDGE_BYTES)
        digest.update(f.read(EDGE_BYTES))
    return {"size": size, "mtime_ns": os.stat(path).st_mtime_ns, "edges_sha256": digest.hexdigest()}


def _param_json(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cache_key parameter value {value!r} ({type(value).__name__}) is not JSON-like")
