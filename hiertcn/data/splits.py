"""Train/validation/test splits of a packed log, as a role per session.

A :class:`Dataset` is one :class:`SessionCSR` plus ``role (S,)``: every session
is TRAIN, VALID or TEST, so a user's history stays one contiguous row and a
model can read a held-out session with the user's earlier sessions as context.
A training loader reads only ``role == TRAIN`` sessions; nothing held out is
in them.

Splits that evaluate on users seen in training (last-session-out, by time)
keep only items that occur in a TRAIN session inside VALID/TEST sessions, and
then drop held-out sessions shorter than ``min_test_len`` (HRNN protocol). The
item catalogue is kept whole (``item_ids`` and item indices never change, so
embeddings sized by ``n_items`` stay valid) and user rows are kept even if a
filter empties them.

A Dataset of a log with impressions also holds them per interaction, ragged
and aligned with ``csr.item`` (``imp_ptr (N+1,)``, ``imp_item (M,)``; see
:mod:`hiertcn.data.impressions`); both are None for a log without them.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hiertcn_kernels._io import atomic_directory, saved_with_header
from hiertcn_kernels.packing import SessionCSR

from .._ragged import offsets

TRAIN, VALID, TEST = 0, 1, 2
ROLE_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}
FORMAT = "hiertcn.Dataset"
FORMAT_VERSION = 2  # 2: per-array checksums, optional impressions
READABLE_VERSIONS = (1, 2)
ARRAYS = ("role", "imp_ptr", "imp_item")  # the .npy files of a saved Dataset (impressions optional)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A packed log with a role per session: ``role (S,)`` int8 in {TRAIN, VALID, TEST}; ``info``: metadata.

    ``imp_ptr (N+1,)`` / ``imp_item (M,)`` int64 (or both None): interaction ``n``
    of ``csr`` was shown the dense items ``imp_item[imp_ptr[n]:imp_ptr[n+1]]``.
    """

    csr: SessionCSR
    role: np.ndarray
    info: dict = field(default_factory=dict)
    imp_ptr: np.ndarray | None = None
    imp_item: np.ndarray | None = None

    @property
    def impressions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(imp_ptr, imp_item)``, or None when the log has no impressions."""
        return None if self.imp_ptr is None else (self.imp_ptr, self.imp_item)

    def sessions(self, role: int) -> np.ndarray:
        """Indices (into ``csr.session_ptr``) of the sessions with ``role``, in CSR order."""
        return np.flatnonzero(self.role == role)

    def counts(self) -> dict[str, int]:
        """Sessions and interactions per role, e.g. ``{"train_sessions": ..., "train_interactions": ...}``."""
        lengths = np.diff(self.csr.session_ptr)
        out = {}
        for role, name in ROLE_NAMES.items():
            mask = self.role == role
            out[f"{name}_sessions"] = int(mask.sum())
            out[f"{name}_interactions"] = int(lengths[mask].sum())
        return out

    def validate(self) -> Dataset:
        self.csr.validate()
        if not isinstance(self.role, np.ndarray) or self.role.dtype != np.int8:
            raise TypeError(f"Dataset.role must be an int8 numpy array, got {getattr(self.role, 'dtype', type(self.role))}")
        if self.role.shape != (self.csr.n_sessions,):
            raise ValueError(f"Dataset.role must have shape ({self.csr.n_sessions},), got {self.role.shape}")
        if len(self.role) and (self.role.min() < TRAIN or self.role.max() > TEST):
            raise ValueError("Dataset.role values must be TRAIN (0), VALID (1) or TEST (2)")
        if (self.imp_ptr is None) != (self.imp_item is None):
            raise ValueError("Dataset.imp_ptr and Dataset.imp_item must be given together")
        if self.imp_ptr is not None:
            _check_impressions(self.imp_ptr, self.imp_item, self.csr)
        return self

    def save(self, path) -> Path:
        """``path/csr`` (SessionCSR.save), ``path/role.npy``, ``path/dataset.json``, and with impressions
        ``path/imp_ptr.npy`` and ``path/imp_item.npy``; written atomically. An existing ``path`` is replaced
        only if it is an earlier save or an empty directory; anything else raises ``FileExistsError``."""
        path = Path(path)
        self.validate()
        with atomic_directory(path, replaces=saved_with_header("dataset.json", FORMAT), kind="a saved Dataset") as tmp:
            self.csr.save(tmp / "csr")
            checksums = {}
            for name in ARRAYS:
                array = getattr(self, name)
                if array is not None:
                    array = np.ascontiguousarray(array)
                    np.save(tmp / f"{name}.npy", array, allow_pickle=False)
                    checksums[name] = zlib.crc32(array.tobytes())
            header = {"format": FORMAT, "version": FORMAT_VERSION, "crc32": checksums, "info": self.info}
            (tmp / "dataset.json").write_text(json.dumps(header, indent=1, default=_jsonable))
        return path

    @classmethod
    def load(cls, path, mmap: bool = True) -> Dataset:
        path = Path(path)
        try:
            header = json.loads((path / "dataset.json").read_text())
        except FileNotFoundError:
            raise ValueError(f"{path} is not a saved Dataset: dataset.json is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path / 'dataset.json'} is corrupt: {e}") from None
        version = header.get("version") if isinstance(header, dict) else None
        if not isinstance(header, dict) or header.get("format") != FORMAT or version not in READABLE_VERSIONS:
            raise ValueError(f"{path / 'dataset.json'} is not a {FORMAT} header (version 1 or 2)")
        csr = SessionCSR.load(path / "csr", mmap=mmap)
        checksums = header.get("crc32", {}) if version == 2 else {"role": header.get("role_crc32")}
        if "role" not in checksums:
            raise ValueError(f"{path / 'dataset.json'} lists no role checksum")
        arrays = {}
        for name, crc in checksums.items():
            if name not in ARRAYS:
                raise ValueError(f"{path / 'dataset.json'} lists an unknown array {name!r}")
            file = path / f"{name}.npy"
            try:
                arrays[name] = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise ValueError(f"{file} is missing, truncated or corrupt: {e}") from None
            if zlib.crc32(np.ascontiguousarray(arrays[name]).tobytes()) != crc:
                raise ValueError(f"{file} checksum mismatch: the file was modified after it was saved")
        try:
            return cls(csr, info=header.get("info", {}), **arrays).validate()
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path} holds an invalid Dataset: {e}") from None


def split_by_user(csr: SessionCSR, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> Dataset:
    """HierTCN's protocol, users cut 80/10/10 (every session of a user gets the user's role), after a seeded shuffle.

    The release cuts its user table in order; the shuffle keeps a log whose ids follow sign-up
    time (or any other order) from putting its newest users in test.

    Held-out users are new users, so no item filter applies.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(csr.n_users)
    # Cuts at the rounded cumulative fractions: a zero fraction gets no users, the three always add up.
    train_end = round(fractions[0] * csr.n_users)
    valid_end = max(train_end, round((fractions[0] + fractions[1]) * csr.n_users)) if fractions[2] else csr.n_users
    user_role = np.empty(csr.n_users, np.int8)
    user_role[order[:train_end]] = TRAIN
    user_role[order[train_end:valid_end]] = VALID
    user_role[order[valid_end:]] = TEST
    role = np.repeat(user_role, np.diff(csr.user_ptr))
    info = {"split": "user", "fractions": list(fractions), "seed": seed}
    return _finish(csr, role, info)


def split_last_session(csr: SessionCSR, n_valid: int = 1, n_test: int = 1, min_test_len: int = 2) -> Dataset:
    """Session-aware protocol (HRNN): per user the last ``n_test`` sessions are TEST, the ``n_valid`` before VALID.

    Users with at most ``n_valid + n_test`` sessions stay all-train (they would
    have no training history). Held-out sessions then keep only items seen in
    training and must keep ``min_test_len`` interactions.
    """
    for name, value in (("n_valid", n_valid), ("n_test", n_test), ("min_test_len", min_test_len)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    n_sessions = np.diff(csr.user_ptr)
    session_user = np.repeat(np.arange(csr.n_users), n_sessions)
    from_end = csr.user_ptr[1:][session_user] - 1 - np.arange(csr.n_sessions)  # 0 for each user's last session
    eligible = n_sessions[session_user] > n_valid + n_test
    role = np.full(csr.n_sessions, TRAIN, np.int8)
    role[eligible & (from_end < n_test + n_valid)] = VALID
    role[eligible & (from_end < n_test)] = TEST
    info = {"split": "last_session", "n_valid": n_valid, "n_test": n_test, "min_test_len": min_test_len}
    return _finish(csr, role, info, min_test_len)


def split_by_time(csr: SessionCSR, cutoff: int, valid_cutoff: int | None = None, min_test_len: int = 2) -> Dataset:
    """Sessions starting at/after ``cutoff`` are TEST, those starting in ``[valid_cutoff, cutoff)`` VALID.

    A session is assigned whole by its start time (sessions are not cut at the
    boundary). Held-out sessions keep only items seen in training and must keep
    ``min_test_len`` interactions.
    """
    if valid_cutoff is not None and valid_cutoff > cutoff:
        raise ValueError(f"valid_cutoff ({valid_cutoff}) must not be after cutoff ({cutoff})")
    # Empty sessions (a hand-built CSR may have them) have no start time; they stay TRAIN.
    nonempty = np.diff(csr.session_ptr) > 0
    start = np.zeros(csr.n_sessions, np.int64)
    start[nonempty] = csr.timestamp[csr.session_ptr[:-1][nonempty]]
    role = np.full(csr.n_sessions, TRAIN, np.int8)
    if valid_cutoff is not None:
        role[nonempty & (start >= valid_cutoff)] = VALID
    role[nonempty & (start >= cutoff)] = TEST
    info = {"split": "time", "cutoff": int(cutoff), "valid_cutoff": None if valid_cutoff is None else int(valid_cutoff),
            "min_test_len": min_test_len}
    return _finish(csr, role, info, min_test_len)


def _finish(csr: SessionCSR, role: np.ndarray, info: dict, min_test_len: int | None = None) -> Dataset:
    if min_test_len is not None:
        before = csr.n_interactions, csr.n_sessions
        csr, role = _filter_held_out(csr, role, min_test_len)
        info["dropped_interactions"] = before[0] - csr.n_interactions
        info["dropped_sessions"] = before[1] - csr.n_sessions
    dataset = Dataset(csr, role, info)
    info.update(dataset.counts())
    return dataset


def _filter_held_out(csr: SessionCSR, role: np.ndarray, min_len: int) -> tuple[SessionCSR, np.ndarray]:
    """In VALID/TEST sessions drop items never seen in a TRAIN session, then sessions shorter than ``min_len``."""
    lengths = np.diff(csr.session_ptr)
    interaction_session = np.repeat(np.arange(csr.n_sessions), lengths)
    interaction_train = role[interaction_session] == TRAIN
    seen_in_train = np.bincount(csr.item[interaction_train], minlength=csr.n_items) > 0
    keep = interaction_train | seen_in_train[csr.item]
    kept_lengths = np.bincount(interaction_session[keep], minlength=csr.n_sessions)
    keep_session = (role == TRAIN) | (kept_lengths >= max(min_len, 1))
    keep &= keep_session[interaction_session]
    session_user = np.repeat(np.arange(csr.n_users), np.diff(csr.user_ptr))
    filtered = SessionCSR(
        user_ptr=offsets(np.bincount(session_user[keep_session], minlength=csr.n_users)),
        session_ptr=offsets(kept_lengths[keep_session]),
        item=csr.item[keep],
        timestamp=csr.timestamp[keep],
        user_ids=np.asarray(csr.user_ids).copy(),
        item_ids=np.asarray(csr.item_ids).copy(),
    )
    return filtered, role[keep_session]


def _check_impressions(imp_ptr, imp_item, csr: SessionCSR) -> None:
    for name, array in (("imp_ptr", imp_ptr), ("imp_item", imp_item)):
        if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype != np.int64:
            raise TypeError(f"Dataset.{name} must be a 1-D int64 numpy array")
    if len(imp_ptr) != csr.n_interactions + 1 or imp_ptr[0] != 0 or imp_ptr[-1] != len(imp_item):
        raise ValueError(
            f"Dataset.imp_ptr must have length n_interactions + 1 = {csr.n_interactions + 1}, "
            "start at 0 and end at len(imp_item)"
        )
    if np.any(np.diff(imp_ptr) < 0):
        raise ValueError("Dataset.imp_ptr must be non-decreasing")
    if len(imp_item) and (imp_item.min() < 0 or imp_item.max() >= csr.n_items):
        raise ValueError(f"Dataset.imp_item holds item indices outside [0, {csr.n_items})")


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Dataset.info holds a {type(value).__name__}, which cannot be saved as JSON")
