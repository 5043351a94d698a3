"""Impressions: the vectorised (user, ISO week) mapping vs a pandas merge, and HierTCN's has_impression cost.

    PYTHONPATH=. python -m pytest tests/benchmarks/test_bench_impressions.py --benchmark-only -s
"""

import time

import numpy as np
import pandas as pd
import pytest
import torch

from hiertcn.batching import QueueBatcher
from hiertcn.data import generate_xing, pack_sessions, read_impressions, read_log
from hiertcn.data.impressions import MAX_IMPRESSIONS, iso_year_week, map_impressions
from hiertcn.losses import build_loss
from hiertcn.models import build_model


def map_impressions_pandas(csr, imp, max_per_event=MAX_IMPRESSIONS):
    """The same mapping as one pandas merge of the events with the exploded impression rows."""
    year, week = iso_year_week(csr.timestamp)
    event_user = np.repeat(csr.user_ids, np.diff(csr.session_ptr[csr.user_ptr]))
    events = pd.DataFrame({"user": event_user, "year": year, "week": week, "event": np.arange(len(year))})
    row = np.repeat(np.arange(len(imp)), np.diff(imp.item_ptr))
    shown = pd.DataFrame(
        {"user": imp.user[row], "year": imp.year[row], "week": imp.week[row], "raw": imp.items, "order": row}
    )
    catalogue = pd.Series(np.arange(len(csr.item_ids)), index=csr.item_ids)
    shown["item"] = shown["raw"].map(catalogue)
    shown = shown.dropna(subset=["item"])
    merged = events.merge(shown, on=["user", "year", "week"]).sort_values(["event", "order"], kind="stable")
    merged = merged[merged.groupby("event").cumcount() < max_per_event]
    imp_ptr = np.zeros(len(year) + 1, dtype=np.int64)
    np.cumsum(np.bincount(merged["event"], minlength=len(year)), out=imp_ptr[1:])
    return imp_ptr, merged["item"].to_numpy(np.int64)


@pytest.fixture(scope="module")
def xing(tmp_path_factory):
    files = generate_xing(tmp_path_factory.mktemp("xing"), n_users=5000, n_items=2000, seed=0)
    log = read_log(files.interactions)
    return pack_sessions(log.user, log.item, log.timestamp), read_impressions(files.impressions)


def test_bench_map_impressions_vs_pandas(benchmark, xing):
    csr, imp = xing
    baseline = []
    for _ in range(3):
        start = time.perf_counter()
        expected = map_impressions_pandas(csr, imp)
        baseline.append(time.perf_counter() - start)
    imp_ptr, imp_item = benchmark.pedantic(map_impressions, args=(csr, imp), rounds=5, warmup_rounds=1)
    np.testing.assert_array_equal(imp_ptr, expected[0])
    np.testing.assert_array_equal(imp_item, expected[1])
    speedup = min(baseline) / benchmark.stats.stats.min
    benchmark.extra_info.update(
        interactions=csr.n_interactions, pandas_seconds=min(baseline), speedup_vs_pandas=speedup
    )
    print(f"\n{csr.n_interactions} interactions: map_impressions {benchmark.stats.stats.min:.3f}s, "
          f"pandas merge {min(baseline):.3f}s, {speedup:.1f}x")  # fmt: skip


def test_bench_has_impression_training_step(benchmark, xing):
    """One forward + backward of HierTCN with has_impression vs without, on the same batch."""
    csr, imp = xing
    batcher = QueueBatcher(csr, n_queues=32, impressions=map_impressions(csr, imp))
    batch = next(iter(batcher.batches(0)))
    loss_fn = build_loss("softmax")
    sizes = {"embedding_dim": 64, "hidden_dim": 64, "channels": 64, "levels": 2}

    def step(model):
        user_emb, _ = model(batch)
        loss = loss_fn(model, user_emb, batch.items)
        loss.backward()
        return loss

    torch.manual_seed(0)
    plain = build_model("hiertcn", n_items=csr.n_items, **sizes)
    step(plain)
    baseline = []
    for _ in range(5):
        start = time.perf_counter()
        step(plain)
        baseline.append(time.perf_counter() - start)
    with_imp = build_model("hiertcn", n_items=csr.n_items, **sizes, has_impression=True)
    benchmark.pedantic(step, args=(with_imp,), rounds=5, warmup_rounds=1)
    ratio = benchmark.stats.stats.min / min(baseline)
    benchmark.extra_info.update(tokens=batch.n_tokens, impressions=batch.imp_item.numel(), time_ratio=ratio)
    with_ms, plain_ms = benchmark.stats.stats.min * 1e3, min(baseline) * 1e3
    print(f"\n{batch.n_tokens} tokens, {batch.imp_item.numel()} impressions: has_impression step "
          f"{with_ms:.1f} ms, plain {plain_ms:.1f} ms, {ratio:.2f}x")  # fmt: skip
