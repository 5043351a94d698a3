"""Interaction logs as CSR: users -> sessions -> interactions.

``pack_sessions`` (Numba) builds a :class:`SessionCSR` from raw arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SessionCSR:
    """Packed interaction log. All arrays are int64 numpy arrays.

    ``user_ptr (U+1,)`` offsets into sessions, ``session_ptr (S+1,)`` offsets into
    interactions, ``item (N,)`` dense item index ``0..I-1``, ``timestamp (N,)``,
    ``user_ids (U,)`` raw id of each user row (ascending), ``item_ids (I,)`` raw id
    of each item index (ascending). Users ascend by raw id; sessions and
    interactions by time.
    """

    user_ptr: np.ndarray
    session_ptr: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ptr) - 1

    @property
    def n_sessions(self) -> int:
        return len(self.session_ptr) - 1

    @property
    def n_interactions(self) -> int:
        return len(self.item)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)
