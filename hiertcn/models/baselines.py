"""The paper's baselines, on the same batches and scoring head as HierTCN.

``MovingAverage``, ``GRU4Rec`` and ``FlatTCN`` read a user's whole history as
one flat sequence (a user's run of windows in a lane; they carry no state
across batches). ``HRNN`` steps over windows like HierTCN and carries its
user-level state.
"""

from __future__ import annotations

import torch
from torch import nn

from hiertcn.batching import SessionBatch
from hiertcn_kernels import TCNBlock

from .base import (
    Recommender,
    check_state,
    lane_slots,
    pad_segments,
    shift_right,
    user_offsets,
    window_lengths,
)


def _item_embedding(n_items: int, dim: int) -> nn.Embedding:
    emb = nn.Embedding(n_items, dim)
    nn.init.normal_(emb.weight, std=dim**-0.5)
    return emb


class MovingAverage(Recommender):
    """Mean of the (learned) embeddings of the user's last ``window`` items before each position.

    The first position of a history has no items before it and gets the zero
    vector, so it is scored by the output bias alone (popularity).
    """

    def __init__(self, n_items: int, *, embedding_dim: int = 128, window: int = 10, tied: bool = False):
        super().__init__(n_items)
        if window < 1:
            raise ValueError(f"window must be positive, got {window}")
        self.window = window
        self.item_emb = _item_embedding(n_items, embedding_dim)
        self._init_head(embedding_dim, self.item_emb if tied else None)

    def forward(self, batch: SessionBatch, state=None):
        emb = self.item_emb(batch.items)
        offsets = user_offsets(batch)
        # Exclusive prefix sums in float64 so long histories do not lose precision to cancellation.
        prefix = torch.cat([emb.new_zeros(1, emb.shape[1], dtype=torch.float64), emb.double().cumsum(0)])
        t = torch.arange(emb.shape[0], device=emb.device)
        start = torch.repeat_interleave(offsets[:-1], offsets.diff(), output_size=emb.shape[0])
        lo = torch.maximum(t - self.window, start)
        count = (t - lo).clamp(min=1).to(torch.float64)[:, None]
        return ((prefix[t] - prefix[lo]) / count).to(emb.dtype), None


class GRU4Rec(Recommender):
    """Multi-layer GRU (2 x 200 in the release) over the whole history, input shifted right."""

    def __init__(
        self, n_items: int, *, embedding_dim: int = 128, hidden_dim: int = 200, layers: int = 2,
        dropout: float = 0.0, tied: bool = False,
    ):
        super().__init__(n_items)
        self.item_emb = _item_embedding(n_items, embedding_dim)
        self.gru = nn.GRU(embedding_dim, hidden_dim, layers, batch_first=True, dropout=dropout)
        self._init_head(hidden_dim, self.item_emb if tied else None)

    def forward(self, batch: SessionBatch, state=None):
        offsets = user_offsets(batch)
        x = shift_right(self.item_emb(batch.items), offsets)
        lengths = offsets.diff()
        padded, valid, rows = pad_segments(x, offsets[:-1], lengths)
        if padded.is_cuda:  # cuDNN's packed GRU
            packed = nn.utils.rnn.pack_padded_sequence(padded, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.gru(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])
        else:
            out = gru_in_time_chunks(self.gru, padded, lengths)
        user_emb = x.new_empty(x.shape[0], out.shape[-1])
        user_emb = user_emb.index_put((rows,), out[valid])
        return user_emb, None


def gru_in_time_chunks(gru: nn.GRU, padded: torch.Tensor, lengths: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``gru`` (batch first) over right-padded sequences ``(B, L, D)`` of ``lengths``, as the packed GRU
    computes them (the outputs past a sequence's end are not: read only the valid ones), chunk by chunk
    of time over the sequences still running, longest first. A chunk ends where a sequence ends, or after
    ``chunk`` steps, so no step runs past a sequence's end.

    On the CPU, torch's packed GRU backward costs O(longest x total): each step's slice of the packed
    input gets a gradient the size of the whole input. A 4,000-event history took 20 s a step, a
    20,000-event one most of 10 minutes. By chunks it is linear."""
    order = torch.argsort(lengths, descending=True, stable=True)
    running, x, h, pieces = lengths[order].tolist(), padded[order], None, []
    ends = sorted(set(running) | set(range(chunk, max(running, default=0), chunk)))
    start = 0
    for end in ends:
        if end <= start:
            continue
        n = sum(length > start for length in running)  # a prefix: longest first
        out, h = gru(x[:n, start:end], None if h is None else h[:, :n].contiguous())
        pieces.append(torch.cat([out, out.new_zeros(len(running) - n, *out.shape[1:])]) if n < len(running) else out)
        start = end
    if not pieces:
        return padded.new_zeros(*padded.shape[:2], gru.hidden_size)
    return torch.cat(pieces, 1)[torch.argsort(order)]


class FlatTCN(Recommender):
    """One TCN over each user's whole history, padded to the longest in the batch (as in the release).

    Level ``l`` is a residual block with dilation ``2**l``; where the channel
    count changes, a bias-free 1x1 projection comes first and the block keeps its width
    (the release's block widens its conv branch instead and projects only the residual,
    with a bias; both learn the same functions, this one with a few more weights).
    ``dropout``: each block's channel dropout on its residual branch, as in the release
    (:class:`~hiertcn_kernels.TCNBlock`). ``recompute``: blocks keep only their input for
    backward, as in :class:`HierTCN`.
    """

    def __init__(
        self, n_items: int, *, embedding_dim: int = 128, channels=(128, 128, 128, 128, 256, 256),
        kernel_size: int = 5, block: str = "relu", dropout: float = 0.0, recompute: bool = False,
        tied: bool = False,
    ):
        super().__init__(n_items)
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
        self.item_emb = _item_embedding(n_items, embedding_dim)
        self.levels = nn.ModuleList()
        prev = embedding_dim
        for level, c in enumerate(channels):
            proj = nn.Linear(prev, c, bias=False) if c != prev else nn.Identity()
            tcn_block = TCNBlock(c, kernel_size, 2**level, block, recompute=recompute, dropout=dropout)
            self.levels.append(nn.ModuleList([proj, tcn_block]))
            prev = c
        self._init_head(prev, self.item_emb if tied else None)

    def forward(self, batch: SessionBatch, state=None):
        offsets = user_offsets(batch)
        x = shift_right(self.item_emb(batch.items), offsets)
        h, valid, rows = pad_segments(x, offsets[:-1], offsets.diff())
        for proj, block in self.levels:
            h = block(proj(h))
        user_emb = h.new_empty(x.shape[0], h.shape[-1]).index_put((rows,), h[valid])
        return user_emb, None


class HRNN(Recommender):
    """Hierarchical RNN (Quadrana et al., RecSys 2017).

    A session GRU runs over each window's items, starting from
    ``tanh(W u)`` where ``u`` is the user GRU's state before the window; the
    session GRU's last state then updates ``u``. Position ``t`` is represented
    by the session GRU state after the items before ``t`` (``tanh(W u)`` at
    the window start).

    Dropout: ``dropout`` on the item embeddings; the paper's code (hgru4rec) has
    ``session_dropout`` on the session GRU's states (0.1 in its XING runs),
    ``user_dropout`` on the user GRU's state and ``init_dropout`` on ``tanh(W u)``.
    Here the session states are dropped where they are read (scored, and fed to the
    user GRU), not inside the session GRU's recurrence (one cuDNN call per slot).
    """

    carries_state = True

    def __init__(
        self, n_items: int, *, embedding_dim: int = 128, session_dim: int = 128, user_dim: int = 128,
        dropout: float = 0.0, session_dropout: float = 0.0, user_dropout: float = 0.0, init_dropout: float = 0.0,
        tied: bool = False,
    ):
        super().__init__(n_items)
        self.user_dim = user_dim
        self.item_emb = _item_embedding(n_items, embedding_dim)
        self.session_gru = nn.GRU(embedding_dim, session_dim, batch_first=True)
        self.user_cell = nn.GRUCell(session_dim, user_dim)
        self.session_init = nn.Linear(user_dim, session_dim)
        self.dropout, self.session_dropout, self.user_dropout, self.init_dropout = (
            nn.Dropout(p) if p > 0 else nn.Identity() for p in (dropout, session_dropout, user_dropout, init_dropout)
        )
        self._init_head(session_dim, self.item_emb if tied else None)

    def init_state(self, n_lanes: int, device=None) -> torch.Tensor:
        """``(n_lanes, user_dim)`` zeros."""
        return torch.zeros(n_lanes, self.user_dim, device=device)

    def forward(self, batch: SessionBatch, state: torch.Tensor | None = None):
        emb = self.dropout(self.item_emb(batch.items))
        if state is None:
            state = self.init_state(batch.n_lanes, emb.device)
        check_state(state, (batch.n_lanes, self.user_dim), "HRNN")
        u = state.to(emb.dtype)
        starts, lengths = batch.cu_seqlens[:-1].long(), window_lengths(batch)
        outs, out_rows = [], []
        for lanes, windows in lane_slots(batch):
            ul = torch.where(batch.new_user[windows][:, None], 0.0, u[lanes])  # not a product: see HierTCN
            h0 = self.init_dropout(torch.tanh(self.session_init(ul)))
            padded, valid, rows = pad_segments(emb, starts[windows], lengths[windows])
            if padded.shape[1]:  # else every window of the slot is empty (hand-built batches only)
                seq, _ = self.session_gru(padded, h0[None])
                seq = self.session_dropout(seq)
                # The state before position t: h0 at t=0, then the GRU output after item t-1.
                before = torch.cat([h0[:, None], seq[:, :-1]], dim=1)
                outs.append(before[valid])
                out_rows.append(rows)
                last = seq[torch.arange(len(windows), device=seq.device), (lengths[windows] - 1).clamp(min=0)]
                # An empty window leaves the user state as it was.
                ul = torch.where((lengths[windows] > 0)[:, None], self.user_dropout(self.user_cell(last, ul)), ul)
            u = u.index_copy(0, lanes, ul)
        if not outs:
            return emb.new_zeros(0, self.session_gru.hidden_size), u
        return torch.cat(outs)[torch.argsort(torch.cat(out_rows))], u
