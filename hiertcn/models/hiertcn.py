"""HierTCN (You et al., WWW 2019), faithful to the authors' release.

High level: the mean (or sum / max) of each session window's item embeddings
plus a bias, and a 2-layer GRU stepping once per window. (The release's AGG is
a dense layer over the window's mean one-hot item vector that shares its kernel
with the item embedding, ``dense(..., name='emb', reuse=AUTO_REUSE)`` in
``model_hier.py``: the mean embedding plus a bias. ``agg_dense="separate"`` gives
the AGG a dense layer of its own instead, this project's default before
2026-11-30 and what the recorded accuracy runs used.) The GRU state
*before* window ``i`` (after the user's windows ``< i``; zeros for the first)
is expanded to every position of window ``i``. Low level: concat(item
embedding shifted right with a zero start token, that state), a bias-free
projection, then a TemporalConvNet over each window (varlen, causal), then the
item logits through the output table. Optionally the carried state decays with
the time gap before a window: ``state *= exp(-gap / bandwidth)``, with a fixed
bandwidth (default one week, the release's 168 hours) or, as in the release,
``bandwidth * sigmoid(dense(state))``.

Defaults follow the release's ``args.py``: 128-d items, a 2x128 GRU and
``tcn_channel=[128, 128]``, i.e. two TCN levels (kernel 5, dilations 1 and 2:
receptive field 13 over windows of at most 20 items). The commented checkpoint
names in that file show some of the authors' runs with four levels
(``channel128,128,128,128``); pass ``levels=4`` for those. ``dropout`` (release
default 0): the release's channel dropout on each TCN block's residual branch
(see ``hiertcn_kernels.TCNBlock``). ``output_dropout`` (ours, not the release's):
element-wise dropout on every TCN block's output, the last one included (see
``hiertcn_kernels.TemporalConvNet``). ``recompute``: TCN blocks keep only their
input for backward.

``has_impression=True`` (the release's option) also concatenates, to each input
step, the mean embedding of the items impressed with that step's interaction
(zeros if none). It travels with the shifted item embedding, so position ``t``
reads the impressions of the user's interactions before ``t`` only. The batch
must then carry impressions (a log prepared with them).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from hiertcn.batching import LaneRuns, SessionBatch
from hiertcn_kernels import TemporalConvNet, segment_expand, segment_reduce

from .base import (
    Recommender,
    check_state,
    embed_project_shifted,
    lane_runs,
    lane_slots,
    shift_right,
    window_lengths,
)

GAP_DECAYS = ("none", "fixed", "learned")


class HierTCN(Recommender):
    carries_state = True

    def __init__(
        self,
        n_items: int,
        *,
        embedding_dim: int = 128,
        hidden_dim: int = 128,
        gru_layers: int = 2,
        channels: int = 128,
        levels: int = 2,
        kernel_size: int = 5,
        block: str = "relu",
        agg: str = "mean",
        agg_dense: str = "shared",
        dropout: float = 0.0,
        output_dropout: float = 0.0,
        recompute: bool = False,
        tied: bool = False,
        gap_decay: str = "none",
        gap_bandwidth: float = 168 * 3600.0,
        has_impression: bool = False,
    ):
        super().__init__(n_items)
        if agg not in ("mean", "sum", "max"):
            raise ValueError(f"agg must be 'mean', 'sum' or 'max', got {agg!r}")
        if agg_dense not in ("shared", "separate"):
            raise ValueError(f"agg_dense must be 'shared' or 'separate', got {agg_dense!r}")
        if gap_decay not in GAP_DECAYS:
            raise ValueError(f"gap_decay must be one of {GAP_DECAYS}, got {gap_decay!r}")
        if gap_bandwidth <= 0:
            raise ValueError(f"gap_bandwidth must be positive, got {gap_bandwidth}")
        self.agg = agg
        self.gap_decay = gap_decay
        self.gap_bandwidth = float(gap_bandwidth)
        self.has_impression = bool(has_impression)
        self.hidden_dim = hidden_dim
        self.gru_layers = gru_layers
        self.item_emb = nn.Embedding(n_items, embedding_dim)
        nn.init.normal_(self.item_emb.weight, std=embedding_dim**-0.5)
        if agg_dense == "separate":
            self.agg_dense = nn.Linear(embedding_dim, embedding_dim)
        else:  # the release: the item embedding as the AGG's kernel, so only its bias is new
            self.agg_bias = nn.Parameter(torch.zeros(embedding_dim))
        # One single-layer GRU per layer (the state before every window is needed at every layer): the
        # GRUCell parameters and init, kept in one flat buffer per layer, which cuDNN reads in place.
        self.session_grus = nn.ModuleList(
            nn.GRU(embedding_dim if layer == 0 else hidden_dim, hidden_dim, batch_first=True)
            for layer in range(gru_layers)
        )
        if gap_decay == "learned":
            self.gap_dense = nn.Linear(gru_layers * hidden_dim, 1)
        # The release concatenates the whole multi-layer state (state_is_tuple=False) to every step.
        step_dim = embedding_dim * (2 if self.has_impression else 1)  # item [+ impressions' mean] embedding
        self.project = nn.Linear(step_dim + gru_layers * hidden_dim, channels, bias=False)
        self.tcn = TemporalConvNet(
            channels, levels, kernel_size, activation=block, dropout=dropout, recompute=recompute,
            output_dropout=output_dropout,
        )
        self._init_head(channels, self.item_emb if tied else None)

    def init_state(self, n_lanes: int, device=None) -> torch.Tensor:
        """``(gru_layers, n_lanes, hidden_dim)`` zeros."""
        return torch.zeros(self.gru_layers, n_lanes, self.hidden_dim, device=device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints before 2026-11-30 held the session GRU as GRUCells: cells.{layer}.weight_ih, ...
        for key in [k for k in state_dict if k.startswith(f"{prefix}cells.")]:
            layer, name = key[len(prefix) + len("cells.") :].split(".", 1)
            state_dict[f"{prefix}session_grus.{layer}.{name}_l0"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _decay(self, h: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """Factor ``exp(-gap / bandwidth)`` per lane, ``(n,)``, in ``h``'s dtype.

        Computed in fp32: fp16 holds no gap past 65,504 s (18 h) nor the 604,800 s bandwidth.
        """
        gap = gap.float()
        if self.gap_decay == "fixed":
            return torch.exp(-gap / self.gap_bandwidth).to(h.dtype)
        flat = h.permute(1, 0, 2).reshape(h.shape[1], -1)
        bandwidth = self.gap_bandwidth * torch.sigmoid(self.gap_dense(flat).float()).squeeze(1)
        # A sigmoid that underflows to 0 must not make a zero gap 0/0.
        return torch.exp(-gap / bandwidth.clamp(min=torch.finfo(torch.float32).tiny)).to(h.dtype)

    def session_context(self, batch: SessionBatch, summaries: torch.Tensor, state: torch.Tensor):
        """GRU over each lane's windows: the state before every window ``(S, layers*H)`` and the final state.

        Without gap decay the recurrence is a plain GRU over each user's run of windows: one fused
        (cuDNN on GPU) GRU call per layer over all runs. A decay between windows, or an empty
        window, steps the cells window slot by window slot instead (same values, ~40 small ops a slot).
        """
        runs = lane_runs(batch) if self.gap_decay == "none" else None
        if runs is None:
            return self._context_by_slots(batch, summaries, state)
        return self._context_by_runs(summaries, state, runs)

    def _context_by_runs(self, summaries: torch.Tensor, state: torch.Tensor, runs: LaneRuns):
        # where, not a product: an inf/NaN state of the lane's previous user must not reach the new one
        h0 = torch.where(runs.fresh[None, :, None], 0.0, state[:, runs.lane])  # (layers, R, H)
        # Past a run's end the GRU steps over zeros: finite, so no NaN reaches the real steps' gradients.
        x = torch.cat([summaries, summaries.new_zeros(1, summaries.shape[1])])[runs.window]
        n_runs, width = runs.window.shape
        before, final = [], []
        for layer, gru in enumerate(self.session_grus):
            # Not gru(x, h): train=True whenever gradients flow, as cuDNN's RNN backward refuses eval mode
            # (no dropout here). The weights are gru's flat buffer (nn.GRU keeps them so): no copy per call.
            with warnings.catch_warnings():  # a deep copy can leave them apart: then cuDNN copies, silently
                warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
                x = torch._VF.gru(x, h0[layer : layer + 1], gru._flat_weights, True, 1, 0.0,
                                  self.training or torch.is_grad_enabled(), False, True)[0]  # fmt: skip
            # The state before window j of a run: the run's initial state, then the output after window j-1.
            before.append(torch.cat([h0[layer][:, None], x[:, :-1]], 1).reshape(n_runs * width, -1)[runs.flat_valid])
            final.append(x[runs.last_run, runs.last_step])
        return torch.cat(before, 1), state.index_copy(1, runs.last_lane, torch.stack(final).to(state.dtype))

    def _context_by_slots(self, batch: SessionBatch, summaries: torch.Tensor, state: torch.Tensor):
        h = state
        lengths = window_lengths(batch)
        before, order = [], []
        for lanes, windows in lane_slots(batch):
            # where, not a product: an inf/NaN state of the lane's previous user must not reach the new one
            reset = torch.where(batch.new_user[windows][None, :, None], 0.0, h[:, lanes])
            hl = reset
            if self.gap_decay != "none":
                hl = hl * self._decay(hl, batch.gap[windows])[None, :, None]
            before.append(hl.permute(1, 0, 2).reshape(len(lanes), -1))
            order.append(windows)
            x, new = summaries[windows], []
            for layer, gru in enumerate(self.session_grus):
                x = torch._VF.gru_cell(x, hl[layer], *gru._flat_weights)  # w_ih, w_hh, b_ih, b_hh: GRUCell's step
                new.append(x)
            # An empty window (hand-built batches only) steps nothing: the state passes it undecayed.
            h = h.index_copy(1, lanes, torch.where((lengths[windows] > 0)[None, :, None], torch.stack(new), reset))
        if not before:
            return summaries.new_zeros(0, self.gru_layers * self.hidden_dim), h
        context = torch.cat(before)[torch.argsort(torch.cat(order))]
        return context, h

    def _impression_mean(self, batch: SessionBatch) -> torch.Tensor:
        """``(T, D)``: mean embedding of each token's impressed items, zeros where it has none."""
        if not batch.has_impressions:
            raise ValueError(
                "HierTCN(has_impression=True) needs batches with impressions: prepare the log with an "
                "impressions file (--impressions)"
            )
        return segment_reduce(self.item_emb(batch.imp_item), batch.imp_ptr, "mean")

    def forward(self, batch: SessionBatch, state: torch.Tensor | None = None):
        cu = batch.cu_seqlens
        # project(concat(shifted item, context)) as two products: the step half per token, the context half
        # per window before the expand (no (T, D + layers*H) concat held for backward).
        w_step, w_context = self.project.weight.split(
            [self.project.in_features - self.gru_layers * self.hidden_dim, self.gru_layers * self.hidden_dim], dim=1)
        if self.has_impression:
            emb = self.item_emb(batch.items)
            x_step = F.linear(shift_right(torch.cat([emb, self._impression_mean(batch)], 1), cu), w_step)
        else:  # the shifted embeddings are gathered again in backward, not kept
            emb, x_step = embed_project_shifted(self.item_emb.weight, batch.items, w_step, cu)
        if state is None:
            state = self.init_state(batch.n_lanes, emb.device)
        check_state(state, (self.gru_layers, batch.n_lanes, self.hidden_dim), "HierTCN")
        summaries = segment_reduce(emb, cu, self.agg)
        summaries = self.agg_dense(summaries) if hasattr(self, "agg_dense") else summaries + self.agg_bias
        context, new_state = self.session_context(batch, summaries, state.to(emb.dtype))
        x = x_step + segment_expand(F.linear(context, w_context), cu)
        return self.tcn(x, cu_seqlens=cu), new_state
