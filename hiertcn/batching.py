"""Batches of session windows laid out in lanes, the one input every model takes.

A lane is one of the official code's queues: a run of sessions in time order,
possibly spanning several users (``new_user`` marks where the carried
high-level state resets). The queue batcher fills lanes with up to 10 session
windows each and carries state across batches; whole-user batches put one
user's full history in each lane. Targets are the items themselves: models
shift inputs right inside each session window, so every position, the first
included, predicts its own item.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class SessionBatch:
    items: torch.Tensor  # (T,) int64 dense item index of every interaction (also the targets)
    cu_seqlens: torch.Tensor  # (S+1,) int64 offsets of session windows into items
    lane_ptr: torch.Tensor  # (Q+1,) int64 offsets of lanes into session windows
    new_user: torch.Tensor  # (S,) bool: window starts a new user in its lane (state reset before it)
    gap: torch.Tensor  # (S,) float32 seconds since the user's previous interaction (0 where new_user)
    target_mask: torch.Tensor  # (T,) bool: positions that count in the loss / metrics
    lane_user: torch.Tensor  # (Q,) int64 user row (SessionCSR) in each lane at the batch end, -1 if none

    @property
    def n_lanes(self) -> int:
        return self.lane_ptr.numel() - 1

    @property
    def n_sessions(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def n_tokens(self) -> int:
        return self.items.numel()

    def to(self, device, non_blocking: bool = False) -> "SessionBatch":
        return SessionBatch(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        )
