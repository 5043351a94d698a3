"""The interface every recommender implements, and the ragged-batch helpers they share."""

from __future__ import annotations

import abc
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn

from hiertcn.batching import LaneRuns, SessionBatch, lane_runs_of, to_device
from hiertcn_kernels._checks import check_count
from hiertcn_kernels.conv import autocast_state


class Recommender(nn.Module, abc.ABC):
    """Next-item recommender over :class:`SessionBatch` lanes.

    ``forward(batch, state)`` returns ``(user_emb (T, D), new_state)``: row ``t``
    is the user representation that predicts ``batch.items[t]`` and uses only
    that user's interactions strictly before ``t``. ``scores(user_emb)`` turns
    it into item logits through the output embedding table (plus bias).

    ``carries_state``: True for models trained with the queue batcher, whose
    per-lane state flows from one batch into the next (the trainer detaches it
    with ``detach_state`` between batches); False for models that see a
    user's whole history in one lane and ignore ``state``.
    """

    carries_state: bool = False

    def __init__(self, n_items: int):
        super().__init__()
        self.n_items = check_count("n_items", n_items)  # numpy integers too, as csr.n_items may be

    def _init_head(self, dim: int, tied_to: nn.Embedding | None = None) -> None:
        """Output table ``(n_items, dim)`` plus bias; ``tied_to`` shares the input item embeddings."""
        self.tied = tied_to is not None
        if tied_to is not None:
            if tied_to.embedding_dim != dim:
                raise ValueError(
                    f"tied output embeddings need the user embedding size ({dim}) to equal the item "
                    f"embedding size ({tied_to.embedding_dim})"
                )
            self._tied_table = tied_to
            self.out_weight = None
        else:
            self.out_weight = nn.Parameter(torch.empty(self.n_items, dim))
            nn.init.normal_(self.out_weight, std=dim**-0.5)
        self.out_bias = nn.Parameter(torch.zeros(self.n_items))

    def output_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight (n_items, D), bias (n_items,))`` of the scoring layer."""
        weight = self._tied_table.weight if self.tied else self.out_weight
        return weight, self.out_bias

    def scores(self, user_emb: torch.Tensor) -> torch.Tensor:
        """Logits over the whole catalogue: ``(n, D) -> (n, n_items)``."""
        weight, bias = self.output_embeddings()
        return torch.addmm(bias, user_emb, weight.t())

    def init_state(self, n_lanes: int, device=None):
        """State for ``n_lanes`` fresh lanes (None for models that carry none)."""
        return

    @staticmethod
    def detach_state(state):
        """Cut the autograd history of a carried state (tensor, tuple of tensors or None)."""
        if state is None:
            return None
        if isinstance(state, torch.Tensor):
            return state.detach()
        return type(state)(s.detach() for s in state)

    @abc.abstractmethod
    def forward(self, batch: SessionBatch, state=None):
        """``(user_emb (T, D), new_state)``: position t uses only the lane's interactions before t."""


def lane_slots(batch: SessionBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For ``j = 0, 1, ...``: ``(lanes, windows)``, the lanes holding a ``j``-th window and that window's index.

    Walking these in order visits every lane's windows in time order, all lanes at once.
    One host read (the window counts) for the whole batch, not one per slot: on a GPU each is a sync.
    """
    ptr = batch.lane_ptr.long()
    counts = ptr.diff()
    if not counts.numel():
        return []
    host_counts = counts.cpu()
    sizes = (host_counts[None, :] > torch.arange(int(host_counts.max()))[:, None]).sum(1).tolist()
    # Lanes by count, most windows first: those with a j-th window are a prefix, read in lane order.
    by_count = torch.argsort(counts, descending=True, stable=True)
    slots = []
    for j, size in enumerate(sizes):
        lanes = by_count[:size].sort().values
        slots.append((lanes, ptr[lanes] + j))
    return slots


def lane_runs(batch: SessionBatch) -> LaneRuns | None:
    """The batch's :class:`~hiertcn.batching.LaneRuns`: those it was built with (on the host), else from
    one host read of its layout; None if there is no window, or an empty one (hand-built batches only)."""
    if batch.runs is not None:
        return batch.runs
    n_windows, n_lanes = batch.n_sessions, batch.n_lanes
    if n_windows == 0:
        return None
    host = torch.cat([batch.lane_ptr.long(), batch.new_user.long(), window_lengths(batch)]).cpu().numpy()
    runs = lane_runs_of(host[: n_lanes + 1], host[n_lanes + 1 : n_lanes + 1 + n_windows] > 0, host[-n_windows:])
    if runs is None:
        return None
    fields_ = [getattr(runs, f.name) for f in fields(LaneRuns)]
    return LaneRuns(*to_device(fields_, batch.cu_seqlens.device, non_blocking=True))


def window_lengths(batch: SessionBatch) -> torch.Tensor:
    return batch.cu_seqlens.long().diff()


def user_offsets(batch: SessionBatch) -> torch.Tensor:
    """Token offsets ``(U+1,)`` of each user's run of windows (a run starts at a lane start or ``new_user``)."""
    n_windows = batch.n_sessions
    starts = batch.new_user.clone()
    lane_starts = batch.lane_ptr[:-1].long()
    starts[lane_starts[lane_starts < n_windows]] = True
    first_windows = torch.nonzero(starts).squeeze(1)
    cu = batch.cu_seqlens.long()
    return torch.cat([cu[first_windows], cu[-1:]])


def _not_a_start(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``(T, 1)`` in ``x``'s dtype: 0 at each segment's first row, else 1 (an empty segment's "start" is
    the next one's, or row T: the extra row dropped here)."""
    keep = torch.ones(x.shape[0] + 1, 1, dtype=x.dtype, device=x.device)
    keep.index_fill_(0, offsets[:-1].long(), 0)  # not keep[index] = 0: index_put_ waits for the GPU
    return keep[:-1]


def shift_right(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``out[t] = x[t-1]`` inside each segment of ``offsets``, zero at a segment's first row (the start token)."""
    return torch.cat([x.new_zeros(1, x.shape[1]), x[:-1]]) * _not_a_start(x, offsets)


class _EmbedProjectShifted(torch.autograd.Function):
    """``(emb, shift_right(emb) @ weight.T)`` with ``emb = table[items]``; for backward it keeps the
    indices, not the shifted rows: they are gathered again (one ``(T, D)`` read), so the projection
    holds no ``(T, D)`` activation. Double backward works (the backward is differentiable ops)."""

    @staticmethod
    def forward(ctx, table, items, weight, offsets):
        emb = F.embedding(items, table)
        ctx.save_for_backward(table, items, weight, offsets)
        return emb, F.linear(shift_right(emb, offsets).to(weight.dtype), weight)

    @staticmethod
    def backward(ctx, d_emb, d_out):
        table, items, weight, offsets = ctx.saved_tensors
        d_table = d_weight = None
        if ctx.needs_input_grad[2]:
            d_weight = d_out.t().mm(shift_right(F.embedding(items, table), offsets).to(weight.dtype))
        if ctx.needs_input_grad[0]:
            # shift_right's adjoint: row t-1 gets row t's gradient unless t starts a segment.
            d_shifted = (d_out.mm(weight) * _not_a_start(d_out, offsets)).to(d_emb.dtype)
            d_emb = d_emb + torch.cat([d_shifted[1:], d_shifted.new_zeros(1, d_shifted.shape[1])])
            d_table = torch.ops.aten.embedding_dense_backward(d_emb, items, table.shape[0], -1, False)
        return d_table, None, d_weight, None


def embed_project_shifted(table, items, weight, offsets):
    """``(emb, F.linear(shift_right(emb, offsets), weight))`` with ``emb = F.embedding(items, table)``,
    the same values and gradients, without keeping ``shift_right(emb)`` for backward. Under
    ``torch.autocast`` the projection runs in its dtype, as ``F.linear`` does."""
    _, enabled, dtype = autocast_state(table)
    cast = enabled and weight.dtype != torch.float64  # autocast leaves float64 alone
    return _EmbedProjectShifted.apply(table, items, weight.to(dtype) if cast else weight, offsets)


def pad_segments(x: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor):
    """Rows ``starts[i] : starts[i]+lengths[i]`` of ``x`` as a padded ``(n, L, C)`` block.

    Returns ``(padded, valid (n, L) bool, rows)`` where ``padded[valid]`` are ``x[rows]``.
    """
    width = int(lengths.max()) if lengths.numel() else 0
    pos = torch.arange(width, device=x.device)
    valid = pos[None, :] < lengths[:, None]
    rows = (starts[:, None] + pos[None, :])[valid]
    padded = x.new_zeros(lengths.numel(), width, x.shape[1])
    padded[valid] = x[rows]
    return padded, valid, rows


def check_catalogue(model: nn.Module, csr, *, exact: bool = False) -> None:
    """``model`` must score every item of ``csr`` (and only those when ``exact``: its outputs are mapped back
    to ``csr``'s raw ids). Found here, from two ints, rather than as an embedding's bare index error (on a GPU,
    a device-side assert)."""
    n_model, n_log = getattr(model, "n_items", None), csr.n_items
    if n_model is None or (n_model == n_log if exact else n_model >= n_log):
        return
    raise ValueError(
        f"the log has {n_log} items but the model scores {n_model}: use the model with the dataset it was "
        f"built for (n_items=dataset.csr.n_items)"
    )


def check_state(state: torch.Tensor, expected: tuple[int, ...], model: str) -> None:
    if not isinstance(state, torch.Tensor) or tuple(state.shape) != expected:
        got = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
        raise ValueError(f"{model} state must be a tensor of shape {expected} (see init_state), got {got}")
