"""Full-catalogue evaluation, event by event, with each user's state warmed up on their earlier sessions.

Each scored session is read in its user's full history (all earlier sessions
first, in time order, windowed as in training), so a carried state or a flat
history is warm; every event of a scored session is ranked, its first included,
against the whole catalogue. Scores are computed in bounded blocks of
``(events x items)``; ties count against the target (see ``hiertcn.metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from hiertcn.batching import MAX_SESSION_LEN, user_batches
from hiertcn.data.splits import TEST
from hiertcn.metrics import (
    MetricAccumulator,
    check_item_ids,
    check_target_scores,
    count_at_or_above,
    target_ranks,
)
from hiertcn.models.base import check_catalogue


def _unpack(data):
    """``(csr, role, impressions)`` of a Dataset-like object or a ``(csr, role)`` tuple (no impressions)."""
    impressions = None
    if isinstance(data, tuple) and len(data) == 2:
        csr, role = data
    elif hasattr(data, "csr") and hasattr(data, "role"):
        csr, role, impressions = data.csr, data.role, getattr(data, "impressions", None)
    else:
        raise TypeError("data must be a dataset with .csr and .role, or a (csr, role) tuple")
    role = np.asarray(role)
    if role.shape != (csr.n_sessions,):
        raise ValueError(f"role must give one role per session, shape ({csr.n_sessions},), got {role.shape}")
    return csr, role, impressions


@torch.no_grad()
def rank_targets(model, user_emb, targets, *, chunk_items=None, max_scores=1 << 24) -> torch.Tensor:
    """1-based full-catalogue rank of each target, holding at most ``max_scores`` scores at once.

    With ``chunk_items`` the catalogue is scored in slices of that many items:
    a first pass reads each target's logit from its own slice, a second counts
    the items scoring at least as high. Both passes run the same product on the
    same slice, so the target's logit is bit-identical to the one it is
    compared with there. An item with the very same output embedding in another
    slice may score an ulp apart (a product of another shape rounds its sums in
    another order; BLAS can even do so between columns of one product), so such
    an exact tie can fall either way: ranks agree across chunk sizes up to
    rounding, as they do across devices.
    """
    weight, bias = model.output_embeddings()
    n_items = weight.shape[0]
    # Without chunk_items, a catalogue of more than max_scores items is still scored in slices.
    chunk = min(n_items, max_scores) if chunk_items is None else min(int(chunk_items), n_items)
    if chunk < 1:
        raise ValueError(f"chunk_items must be positive, got {chunk_items}")
    check_item_ids(n_items, target=targets)
    rows = max(1, max_scores // chunk)
    out = []
    for r0 in range(0, user_emb.shape[0], rows):
        u, y = user_emb[r0:r0 + rows], targets[r0:r0 + rows]
        if chunk == n_items:
            out.append(target_ranks(model.scores(u), y))
            continue
        slices = [(lo, min(lo + chunk, n_items)) for lo in range(0, n_items, chunk)]

        def score(lo, hi, u=u):
            return torch.addmm(bias[lo:hi], u, weight[lo:hi].t())

        target_logit = u.new_empty(u.shape[0])
        for lo, hi in slices:
            inside = (y >= lo) & (y < hi)
            if bool(inside.any()):
                target_logit[inside] = score(lo, hi)[inside].gather(1, (y[inside] - lo)[:, None]).squeeze(1)
        check_target_scores(target_logit)
        count = torch.zeros_like(y)
        for lo, hi in slices:
            count += count_at_or_above(score(lo, hi), target_logit[:, None])
        out.append(count)
    return torch.cat(out) if out else targets.new_zeros(0)


@torch.no_grad()
def score_events(
    model, csr, score_sessions: np.ndarray, *, batch_users: int = 64, max_tokens: int | None = None,
    chunk_items: int | None = None, max_scores: int = 1 << 24, max_session_len: int = MAX_SESSION_LEN,
    device=None, progress: bool = False, impressions=None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(ranks, user rows, interaction indices into csr)`` for every event of the scored sessions.

    ``impressions`` (``Dataset.impressions``) go into the batches of models that read them
    (``has_impression``).
    """
    check_catalogue(model, csr)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    impressions = impressions if getattr(model, "has_impression", False) else None
    was_training = model.training
    model.eval()
    try:
        batches = user_batches(csr, score_sessions=score_sessions, batch_users=batch_users,
                               max_tokens=max_tokens, max_session_len=max_session_len,
                               impressions=impressions)
        for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress):
            batch = batch.to(device)
            state = model.init_state(batch.n_lanes, device) if model.carries_state else None
            user_emb, _ = model(batch, state)
            # A lane's tokens are its user's interactions from the user's first one on, in CSR order.
            cu = batch.cu_seqlens
            lane_tokens = cu[batch.lane_ptr[1:]] - cu[batch.lane_ptr[:-1]]
            first = torch.as_tensor(csr.session_ptr[csr.user_ptr[batch.lane_user.cpu().numpy()]], device=device)
            lane = torch.repeat_interleave(torch.arange(batch.n_lanes, device=device), lane_tokens)
            index = first[lane] + torch.arange(batch.n_tokens, device=device) - cu[batch.lane_ptr[:-1]][lane]
            mask = batch.target_mask
            ranks = rank_targets(model, user_emb[mask], batch.items[mask], chunk_items=chunk_items,
                                 max_scores=max_scores)
            yield ranks.cpu(), batch.lane_user[lane[mask]].cpu(), index[mask].cpu()
    finally:
        model.train(was_training)


def evaluate(
    model, data, *, roles: Sequence[int] = (TEST,), batch_users: int = 64, max_tokens: int | None = None,
    chunk_items: int | None = None, max_scores: int = 1 << 24, max_session_len: int = MAX_SESSION_LEN,
    device=None, progress: bool = False,
) -> dict[str, float]:
    """Rank every event of the sessions whose role is in ``roles`` against the full catalogue.

    ``data``: a :class:`hiertcn.data.splits.Dataset` (anything with ``.csr`` and
    ``.role``, one role per session, and optionally ``.impressions``) or a
    ``(csr, role)`` tuple. Returns the per-event means under the plain keys
    (``recall@1/5/10/20``, ``mrr``, ``mrr@20``, ``mrp``): **per-event is
    primary**. The same metrics averaged per user first are under
    ``user/<key>``, and per event over first events of sessions and the rest
    under ``first/<key>`` and ``later/<key>``; plus ``n_events``, ``n_users``,
    ``n_first`` and ``n_later``. Runs in eval mode with
    no gradients; memory is bounded by ``batch_users`` / ``max_tokens`` for the
    model and ``max_scores`` (scores held at once) for the ranking.
    """
    csr, role, impressions = _unpack(data)
    score_sessions = np.isin(role, np.asarray(roles))
    if not score_sessions.any():
        raise ValueError(f"no session has a role in roles={tuple(roles)}")
    acc = MetricAccumulator(model.n_items)
    session_starts = csr.session_ptr[:-1]
    for ranks, users, index in score_events(
        model, csr, score_sessions, batch_users=batch_users, max_tokens=max_tokens, chunk_items=chunk_items,
        max_scores=max_scores, max_session_len=max_session_len, device=device, progress=progress,
        impressions=impressions,
    ):
        acc.add(ranks, users, first=torch.from_numpy(np.isin(index.numpy(), session_starts)))
    return acc.result()
