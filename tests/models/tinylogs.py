"""Tiny hand-built interaction logs and model sizes shared by the model tests."""

import numpy as np

from hiertcn_kernels.packing import SessionCSR

# Small dims so every model runs in milliseconds on CPU.
TINY = {
    "hiertcn": {"embedding_dim": 16, "hidden_dim": 12, "channels": 16, "levels": 2},
    "moving_average": {"embedding_dim": 16},
    "gru4rec": {"embedding_dim": 16, "hidden_dim": 20},
    "flat_tcn": {"embedding_dim": 16, "channels": (16, 16, 24)},
    "hrnn": {"embedding_dim": 16, "session_dim": 16, "user_dim": 12},
}


def make_csr(session_lengths, n_items, seed=0, items=None):
    """SessionCSR from per-user lists of session lengths; random items and increasing timestamps."""
    rng = np.random.default_rng(seed)
    user_ptr, session_ptr = [0], [0]
    for sessions in session_lengths:
        user_ptr.append(user_ptr[-1] + len(sessions))
        for length in sessions:
            session_ptr.append(session_ptr[-1] + length)
    n = session_ptr[-1]
    item = rng.integers(0, n_items, n) if items is None else np.asarray(items)
    timestamp = np.cumsum(rng.integers(1, 4000, n))
    return SessionCSR(
        user_ptr=np.array(user_ptr, dtype=np.int64), session_ptr=np.array(session_ptr, dtype=np.int64),
        item=item.astype(np.int64), timestamp=timestamp.astype(np.int64),
        user_ids=np.arange(len(session_lengths), dtype=np.int64) * 10, item_ids=np.arange(n_items, dtype=np.int64),
    )


def small_log():
    return make_csr([[3, 25, 2], [1], [4, 2, 5, 7]], n_items=9)
