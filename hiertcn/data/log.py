"""The in-memory interaction log every reader returns and every preset filters.

Plain numpy arrays, one entry per interaction, in file order (but for rows that
share a second, which ``read_log`` puts in sub-second order). Raw ids that were
strings are factorised to int64 codes (code ``k`` is ``user_names[k]``; codes
follow the sorted order of the names, so code order is name order).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Impressions:
    """XING impressions: per row, the items shown to ``user`` in ``(year, week)``.

    ``item_ptr (M+1,)`` offsets into ``items``: row ``r`` showed
    ``items[item_ptr[r]:item_ptr[r+1]]``.
    """

    user: np.ndarray  # (M,) int64
    year: np.ndarray  # (M,) int64
    week: np.ndarray  # (M,) int64
    item_ptr: np.ndarray  # (M+1,) int64
    items: np.ndarray  # (K,) int64

    def __post_init__(self):
        m = len(self.user)
        if len(self.year) != m or len(self.week) != m:
            raise ValueError("impressions: user, year and week must have the same length")
        if len(self.item_ptr) != m + 1 or self.item_ptr[0] != 0 or self.item_ptr[-1] != len(self.items):
            raise ValueError("impressions: item_ptr must have length M+1, start at 0 and end at len(items)")
        if np.any(np.diff(self.item_ptr) < 0):
            raise ValueError("impressions: item_ptr must be non-decreasing")

    def __len__(self) -> int:
        return len(self.user)


@dataclass(frozen=True)
class InteractionLog:
    user: np.ndarray  # (N,) int64 raw user id (or code into user_names)
    item: np.ndarray  # (N,) int64 raw item id (or code into item_names)
    timestamp: np.ndarray  # (N,) int64 unix seconds
    session: np.ndarray | None = None  # (N,) int64 session id from the source, if it has one
    interaction_type: np.ndarray | None = None  # (N,) int8 (XING: 1 click, 2 bookmark, 3 reply, 4 delete)
    user_names: np.ndarray | None = None  # (U,) str: raw string ids, when the source had strings
    item_names: np.ndarray | None = None  # (I,) str
    impressions: Impressions | None = None
    skipped_lines: np.ndarray | None = None  # line numbers of rows the reader dropped (skip_bad_rows=True)

    def __post_init__(self):
        n = len(self.user)
        if n == 0:
            raise ValueError("interaction log is empty (no rows)")
        for name in ("user", "item", "timestamp", "session", "interaction_type"):
            arr = getattr(self, name)
            if arr is None:
                continue
            if not isinstance(arr, np.ndarray) or arr.ndim != 1:
                raise TypeError(f"{name} must be a 1-D numpy array")
            if not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"{name} must have an integer dtype, got {arr.dtype}")
            if len(arr) != n:
                raise ValueError(f"{name} has length {len(arr)}, expected {n} (the length of user)")
        if self.timestamp.min() < 0:
            raise ValueError(
                f"timestamp has negative values (min {self.timestamp.min()}); expected unix seconds"
            )
        for codes, names, label in (
            (self.user, self.user_names, "user"),
            (self.item, self.item_names, "item"),
        ):
            if names is not None and (codes.min() < 0 or codes.max() >= len(names)):
                raise ValueError(f"{label} codes out of range for {label}_names")

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(np.unique(self.user))

    @property
    def n_items(self) -> int:
        return len(np.unique(self.item))

    def select(self, keep: np.ndarray) -> InteractionLog:
        """Rows where the boolean mask ``keep`` is true (names and impressions are kept as they are)."""
        if keep.dtype != np.bool_ or keep.shape != self.user.shape:
            raise ValueError("keep must be a boolean mask with one entry per interaction")
        return self._rows(keep)

    def take(self, rows: np.ndarray) -> InteractionLog:
        """The rows at the integer indices ``rows``, in that order (names and impressions are kept as they are)."""
        if not np.issubdtype(rows.dtype, np.integer) or rows.ndim != 1:
            raise ValueError("rows must be a 1-D array of integer row indices")
        return self._rows(rows)

    def _rows(self, index: np.ndarray) -> InteractionLog:
        optional = {
            name: None if getattr(self, name) is None else getattr(self, name)[index]
            for name in ("session", "interaction_type")
        }
        return replace(
            self, user=self.user[index], item=self.item[index], timestamp=self.timestamp[index], **optional
        )
