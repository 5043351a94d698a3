"""``hiertcn bench``: time one training step per model, and the kernel ops, at a chosen size.

A quick table, not the benchmark suite (that is ``tests/benchmarks``): each
timing is the mean over ``steps`` runs after one warm-up run.
"""

from __future__ import annotations

import time

import torch

from .config import Config
from .train import batch_source, resolve_device


def _timed(fn, steps: int, device: torch.device) -> float:
    """Mean seconds per call of ``fn`` after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def bench_models(dataset, config: Config, names: list[str], *, steps: int = 3) -> dict[str, dict[str, float]]:
    """Per model: ``step_ms`` (forward, loss, backward, Adam) on its first training batch, and interactions/s."""
    from .losses import build_loss
    from .models import build_model

    device = resolve_device(config.device)
    loss_fn = build_loss(config.loss)
    results = {}
    for name in names:
        torch.manual_seed(config.seed)
        model = build_model(name, n_items=dataset.csr.n_items, **config.model_config.get(name, {})).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        batch = next(iter(batch_source(model, dataset, config).batches(0))).to(device)
        state = model.init_state(batch.n_lanes, device) if model.carries_state else None
        mask = batch.target_mask

        def step(model=model, batch=batch, state=state, mask=mask, optimizer=optimizer):
            user_emb, _ = model(batch, state)
            loss = loss_fn(model, user_emb[mask], batch.items[mask], batch=batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds = _timed(step, steps, device)
        results[name] = {"step_ms": 1e3 * seconds, "interactions_per_s": batch.n_tokens / seconds,
                         "tokens": batch.n_tokens}  # fmt: skip
    return results


def bench_kernels(*, tokens: int = 4096, channels: int = 128, steps: int = 5, device=None) -> list[dict]:
    """Forward + backward of ``tcn_block`` and ``segment_reduce`` on sessions of 1..20 items."""
    import os

    from hiertcn_kernels import segment_reduce, tcn_block

    device = device or resolve_device("auto")
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 21, (tokens,), generator=gen)
    lengths = lengths[: int((lengths.cumsum(0) <= tokens).sum())]
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(device)
    n = int(cu[-1])
    x = torch.randn(n, channels, generator=gen).to(device).requires_grad_()
    w = (0.05 * torch.randn(channels, channels, 5, generator=gen)).to(device).requires_grad_()
    ops = {
        "tcn_block(relu, k=5, d=2)": lambda: tcn_block(x, w, dilation=2, cu_seqlens=cu).sum().backward(),
        "segment_reduce(mean)": lambda: segment_reduce(x, cu, "mean").sum().backward(),
    }
    backends = ["reference", "triton"] if device.type == "cuda" else ["reference"]
    rows, before = [], os.environ.get("HIERTCN_BACKEND")
    try:
        for backend in backends:
            os.environ["HIERTCN_BACKEND"] = backend
            for op, fn in ops.items():
                rows.append({"op": op, "backend": backend, "ms": 1e3 * _timed(fn, steps, device), "tokens": n})
    finally:
        if before is None:
            os.environ.pop("HIERTCN_BACKEND", None)
        else:
            os.environ["HIERTCN_BACKEND"] = before
    return rows
