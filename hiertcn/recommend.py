"""Top-K next items for users, after their whole history."""

from __future__ import annotations

import numpy as np
import torch

from .batching import SessionBatch, user_batches


def with_next_slot(batch: SessionBatch) -> SessionBatch:
    """``batch`` plus one extra position at the end of every lane, the only targets.

    Models shift inputs right, so the representation at that extra position has
    read every real interaction of the lane and none of the placeholder item in it.
    """
    cu = batch.cu_seqlens
    last_window = batch.lane_ptr[1:] - 1
    if (batch.lane_ptr.diff() == 0).any():
        raise ValueError("every lane needs at least one interaction to recommend after")
    at = cu[last_window + 1]  # insertion points, one per lane, ascending
    slots = at + torch.arange(len(at))
    n = batch.n_tokens + len(at)
    is_slot = torch.zeros(n, dtype=torch.bool)
    is_slot[slots] = True
    items = torch.zeros(n, dtype=batch.items.dtype)
    items[~is_slot] = batch.items
    windows = torch.arange(batch.n_sessions + 1)
    shift = (last_window[None, :] < windows[:, None]).sum(1)
    impressions = {}
    if batch.has_impressions:  # the slots were shown nothing
        lengths = torch.zeros(n, dtype=torch.int64)
        lengths[~is_slot] = batch.imp_ptr.diff()
        imp_ptr = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        impressions = {"imp_ptr": imp_ptr, "imp_item": batch.imp_item}
    return SessionBatch(
        items=items,
        cu_seqlens=cu + shift,
        lane_ptr=batch.lane_ptr,
        new_user=batch.new_user,
        gap=batch.gap,
        target_mask=is_slot,
        lane_user=batch.lane_user,
        **impressions,
    )


@torch.no_grad()
def recommend(model, csr, user_rows, k: int = 10, *, max_session_len: int = 20, batch_users: int = 256,
              impressions=None):
    """``(items (U, k) raw item ids, scores (U, k))`` for the user rows ``user_rows``, best first.

    For a log with string ids the raw ids are codes: item ``c`` is ``dataset.info["item_names"][c]``.

    ``impressions``: ``Dataset.impressions``, needed by models that read them (``has_impression``).
    """
    if not 1 <= k <= csr.n_items:
        raise ValueError(f"k must be in [1, {csr.n_items}], got {k}")
    device = next(model.parameters()).device
    top_items, top_scores = [], []
    batches = user_batches(
        csr, np.asarray(user_rows), max_session_len=max_session_len, batch_users=batch_users,
        impressions=impressions,
    )
    for batch in batches:
        batch = with_next_slot(batch).to(device)
        state = model.init_state(batch.n_lanes, device) if model.carries_state else None
        user_emb, _ = model(batch, state)
        scores, items = model.scores(user_emb[batch.target_mask]).topk(k, dim=1)
        top_items.append(items.cpu())
        top_scores.append(scores.cpu())
    items = torch.cat(top_items).numpy()
    return np.asarray(csr.item_ids)[items], torch.cat(top_scores).numpy()
