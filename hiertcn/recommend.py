"""Top-K next items for users, after their whole history."""

from __future__ import annotations

import numpy as np
import torch

from .batching import SessionBatch, user_batches


def with_next_slot(batch: SessionBatch, max_session_len: int) -> SessionBatch:
    """``batch`` plus one extra position at the end of every lane, the only targets.

    Models shift inputs right, so the representation at that extra position has
    read every real interaction of the lane and none of the placeholder item in it.
    The slot continues the lane's last window, or, when that window already holds
    ``max_session_len`` items, starts a new one (gap 0), as the next interaction
    would in training.
    """
    if (batch.lane_ptr.diff() == 0).any():
        raise ValueError("every lane needs at least one interaction to recommend after")
    lengths = batch.cu_seqlens.diff()
    last_window = batch.lane_ptr[1:] - 1
    full = lengths[last_window] >= max_session_len
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
    gap = torch.zeros(n_windows, dtype=batch.gap.dtype)
    gap[moved] = batch.gap
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
        gap=gap,
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
        batch = with_next_slot(batch, max_session_len).to(device)
        state = model.init_state(batch.n_lanes, device) if model.carries_state else None
        user_emb, _ = model(batch, state)
        scores, items = model.scores(user_emb[batch.target_mask]).topk(k, dim=1)
        top_items.append(items.cpu())
        top_scores.append(scores.cpu())
    items = torch.cat(top_items).numpy()
    return np.asarray(csr.item_ids)[items], torch.cat(top_scores).numpy()
