"""Top-K next items for users, after their whole history."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ._ragged import ranges
from .batching import SessionBatch, user_batches
from .models.base import check_catalogue


def with_next_slot(
    batch: SessionBatch, max_session_len: int, gap: torch.Tensor | None = None, session_gap: float = 1800
) -> SessionBatch:
    """``batch`` plus one extra position at the end of every lane, the only targets.

    Models shift inputs right, so the representation at that extra position has
    read every real interaction of the lane and none of the placeholder item in it.
    ``gap``: ``(Q,)`` seconds from each lane's last interaction to the request,
    or None when unknown. As the next interaction would in training, the slot
    starts a new window when the gap is at least ``session_gap`` (a new session)
    or the last window already holds ``max_session_len`` items; otherwise it
    continues the last window. A new window carries the gap (0 when unknown).
    """
    if (batch.lane_ptr.diff() == 0).any():
        raise ValueError("every lane needs at least one interaction to recommend after")
    lengths = batch.cu_seqlens.diff()
    last_window = batch.lane_ptr[1:] - 1
    full = lengths[last_window] >= max_session_len  # "full": the slot opens a window
    if gap is not None:
        full |= gap >= session_gap
    lengths[last_window[~full]] += 1
    # Old windows move right by the new windows of earlier lanes; a full lane's new window ends it.
    lane_of_window = torch.repeat_interleave(torch.arange(batch.n_lanes), batch.lane_ptr.diff())
    added_before = torch.cumsum(full, 0) - full.long()
    moved = torch.arange(batch.n_sessions) + added_before[lane_of_window]
    lane_ptr = torch.cat([batch.lane_ptr[:1], batch.lane_ptr[1:] + torch.cumsum(full, 0)])
    n_windows = int(lane_ptr[-1])
    new_lengths = torch.ones(n_windows, dtype=lengths.dtype)
    new_lengths[moved] = lengths
    new_user = torch.zeros(n_windows, dtype=torch.bool)
    new_user[moved] = batch.new_user
    window_gap = torch.zeros(n_windows, dtype=batch.gap.dtype)
    window_gap[moved] = batch.gap
    if gap is not None:
        window_gap[lane_ptr[1:][full] - 1] = gap[full].to(window_gap.dtype)
    cu_seqlens = torch.cat([lengths.new_zeros(1), torch.cumsum(new_lengths, 0)])

    n = batch.n_tokens + batch.n_lanes
    is_slot = torch.zeros(n, dtype=torch.bool)
    is_slot[cu_seqlens[lane_ptr[1:]] - 1] = True
    items = torch.zeros(n, dtype=batch.items.dtype)
    items[~is_slot] = batch.items
    impressions = {}
    if batch.has_impressions:  # the slots were shown nothing
        imp_lengths = torch.zeros(n, dtype=torch.int64)
        imp_lengths[~is_slot] = batch.imp_ptr.diff()
        imp_ptr = torch.cat([imp_lengths.new_zeros(1), imp_lengths.cumsum(0)])
        impressions = {"imp_ptr": imp_ptr, "imp_item": batch.imp_item}
    return SessionBatch(
        items=items,
        cu_seqlens=cu_seqlens,
        lane_ptr=lane_ptr,
        new_user=new_user,
        gap=window_gap,
        target_mask=is_slot,
        lane_user=batch.lane_user,
        **impressions,
    )


class RequestTimeError(ValueError):
    """``at`` is before the last interaction of some users: ``user_rows`` (their rows) and ``last`` (those
    interactions' times), for a caller that names users and times its own way."""

    def __init__(self, at: int, user_rows: np.ndarray, last: np.ndarray):
        self.at, self.user_rows, self.last = at, user_rows, last
        super().__init__(f"at={at} is before the last interaction of {len(user_rows)} user(s) (user row "
                         f"{int(user_rows[0])}: {int(last[0])}); recommend after a user's history")  # fmt: skip


@torch.no_grad()
def recommend(model, csr, user_rows, k: int = 10, *, max_session_len: int = 20, batch_users: int = 256,
              impressions=None, at: int | None = None, session_gap: float = 1800, exclude_seen: bool = False,
              progress: bool = False):
    """``(items (U, k) raw item ids, scores (U, k))`` for the user rows ``user_rows``, best first.

    For a log with string ids the raw ids are codes: item ``c`` is ``dataset.info["item_names"][c]``.

    ``impressions``: ``Dataset.impressions``, needed by models that read them (``has_impression``).
    ``at``: the time of the request (the log's timestamp unit, seconds). When it
    is ``session_gap`` or more after a user's last interaction the next item
    starts a new session, with that gap; None: it continues the last session.
    ``exclude_seen``: leave out the items in each user's history (they score ``-inf`` and are
    listed only when fewer than ``k`` items are left, to keep the arrays ``(U, k)``; ``hiertcn recommend``
    drops them, so its lists may be shorter). ``progress``: a progress bar over the batches of users.
    """
    check_catalogue(model, csr, exact=True)
    if not 1 <= k <= csr.n_items:
        raise ValueError(f"k must be in [1, {csr.n_items}], got {k}")
    user_rows = np.asarray(user_rows, dtype=np.int64)
    if user_rows.ndim != 1 or not len(user_rows):
        raise ValueError(f"user_rows must be a non-empty 1-D sequence of user rows, got shape {user_rows.shape}")
    outside = (user_rows < 0) | (user_rows >= csr.n_users)
    if outside.any():
        raise ValueError(f"user_rows must lie in [0, {csr.n_users}), got {int(user_rows[outside][0])}")
    user_ptr, session_ptr = np.asarray(csr.user_ptr), np.asarray(csr.session_ptr)
    end = session_ptr[user_ptr[user_rows + 1]]
    if (end == session_ptr[user_ptr[user_rows]]).any():
        raise ValueError("every user needs at least one interaction to recommend after")
    timestamp = np.asarray(csr.timestamp)
    if at is not None and (timestamp[end - 1] > at).any():
        late = np.flatnonzero(timestamp[end - 1] > at)
        raise RequestTimeError(at, user_rows[late], timestamp[end[late] - 1])
    device = next(model.parameters()).device
    top_items, top_scores = [], []
    batches = user_batches(
        csr, user_rows, max_session_len=max_session_len, batch_users=batch_users, impressions=impressions,
    )
    n_batches = -(-len(user_rows) // batch_users)
    for batch in tqdm(batches, total=n_batches, desc="recommend", unit="batch", disable=not progress, leave=False):
        lanes = batch.lane_user.numpy()  # read on the host, before the batch moves to the device
        lo, hi = session_ptr[user_ptr[lanes]], session_ptr[user_ptr[lanes + 1]]  # each lane's interactions
        gap = None if at is None else torch.from_numpy(at - timestamp[hi - 1])  # since the last one
        batch = with_next_slot(batch, max_session_len, gap, session_gap).to(device)
        state = model.init_state(batch.n_lanes, device) if model.carries_state else None
        user_emb, _ = model(batch, state)
        scores = model.scores(user_emb[batch.target_mask])
        if exclude_seen:
            seen = torch.from_numpy(np.asarray(csr.item)[ranges(lo, hi)].astype(np.int64)).to(device)
            row = torch.repeat_interleave(torch.arange(len(lanes), device=device), torch.from_numpy(hi - lo).to(device))
            scores.index_put_((row, seen), scores.new_tensor(float("-inf")))
        scores, items = scores.topk(k, dim=1)
        top_items.append(items.cpu())
        top_scores.append(scores.cpu())
    items = torch.cat(top_items).numpy()
    return np.asarray(csr.item_ids)[items], torch.cat(top_scores).numpy()


RECOMMENDATION_FORMATS = (".csv", ".parquet", ".jsonl")


def recommendations_path(path) -> Path:
    """``path`` as a Path, after checking that its suffix names one of ``RECOMMENDATION_FORMATS``."""
    path = Path(path)
    if path.suffix.lower() not in RECOMMENDATION_FORMATS:  # recs.CSV too
        raise ValueError(f"{path}: the file name must end in {', '.join(RECOMMENDATION_FORMATS)}")
    return path


def write_recommendations(path, users, items, scores, keep=None) -> Path:
    """Write ``items``/``scores`` ``(U, k)`` of ``users`` ``(U,)`` (raw ids) to ``path``, by its suffix.

    ``.csv`` and ``.parquet``: one row per recommendation, ``user, rank, item, score`` (rank 1 is the best);
    ``.jsonl``: one line per user, ``{"user", "items", "scores"}`` (a non-finite score is ``null``).
    ``keep`` ``(U, k)`` bool: write only these recommendations (a user's list may then be shorter than ``k``).
    """
    path = recommendations_path(path)
    users, items, scores = list(users), np.asarray(items), np.asarray(scores, dtype=np.float32)
    keep = np.ones(items.shape, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jsonl":
        with path.open("w") as f:
            for user, row, row_scores, row_keep in zip(users, items, scores, keep):
                # float32 scores as their shortest decimal (0.2, not 0.2000000029); NaN/inf as null (valid JSON).
                row_scores = [float(str(x)) if np.isfinite(x) else None for x in row_scores[row_keep]]
                line = {"user": user, "items": row[row_keep].tolist(), "scores": row_scores}
                f.write(json.dumps(line, allow_nan=False) + "\n")
        return path
    import pyarrow as pa

    k = items.shape[1] if items.ndim == 2 else 0
    flat = keep.reshape(-1)
    table = pa.table({
        "user": pa.array([u for u, row_keep in zip(users, keep) for kept in row_keep if kept]),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))[flat]),
        "item": pa.array(items.reshape(-1)[flat].tolist()),
        "score": pa.array(scores.reshape(-1)[flat]),
    })  # fmt: skip
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    return path
