"""Training throughput and activation memory of HierTCN against the baselines, on the same batches (CPU or GPU).

Run: ``PYTHONPATH=. pytest tests/benchmarks/test_bench_models.py --benchmark-only``.
Each benchmark runs on the CPU (id ``cpu``) and on CUDA (id ``cuda``, marked ``cuda``: skipped
without a GPU, selected by the GPU suite's ``-k "cuda or gpu"``).
Throughput: one optimiser step (forward, full-softmax loss, backward, Adam) per
round, every model on the same whole-user batch; ``extra_info`` holds tokens/s
and the speed-up over GRU4Rec, whose step is timed right before each round. Memory: bytes of the
tensors autograd saves for backward in the model body (item ids to user
embeddings; the scoring head costs the same per token for every model and is
left out), on users with 500-event histories: HierTCN on one queue batch (10
windows per lane, the official training layout, state carried) and on whole
histories, against FlatTCN and GRU4Rec, which need whole histories; sessions of
uniform 1..20 items and of lengths drawn from the synthetic XING log, TCN
activations stored or recomputed in backward.
"""

from __future__ import annotations

import functools
import tempfile
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hiertcn.batching import user_batches
from hiertcn.bench import fixed_history_csr, saved_tensor_bytes, synchronize
from hiertcn.data.readers import read_log
from hiertcn.data.synthetic import generate_xing
from hiertcn.losses import build_loss, linear_cross_entropy
from hiertcn.models import MODEL_NAMES, build_model
from hiertcn_kernels.packing import pack_sessions

N_ITEMS = 2000
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


@functools.lru_cache(maxsize=1)
def xing_session_lengths() -> np.ndarray:
    """Session lengths of the synthetic XING log (1,000 users, deletes dropped, 1800 s gap): median 4."""
    with tempfile.TemporaryDirectory() as tmp:
        files = generate_xing(tmp, n_users=1000, seed=0, impressions=False)
        log = read_log(files.interactions, "xing")
    log = log.select(log.interaction_type != 4)
    return np.diff(pack_sessions(log.user, log.item, log.timestamp, session_gap=1800).session_ptr)


def train_step_fn(name: str, batch, device: str):
    torch.manual_seed(0)
    model = build_model(name, n_items=N_ITEMS).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = build_loss("softmax")

    def step():
        state = model.init_state(batch.n_lanes, device) if model.carries_state else None
        user_emb, _ = model(batch, state)
        loss = loss_fn(model, user_emb, batch.items)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        synchronize(torch.device(device))  # a timed step covers the GPU's work, not just its launches

    return step


@pytest.fixture(scope="module")
def cpu_train_batch():
    (batch,) = list(user_batches(fixed_history_csr(32, 100), batch_users=32))
    return batch


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_train_step_throughput(benchmark, device, name, cpu_train_batch):
    """The GRU4Rec baseline step runs right before every timed round, so a busy machine slows both alike."""
    train_batch = cpu_train_batch.to(device)
    benchmark.group = f"{device} train step"
    step, baseline = train_step_fn(name, train_batch, device), train_step_fn("gru4rec", train_batch, device)
    baseline_times = []

    def timed_baseline():
        t0 = time.perf_counter()
        baseline()
        baseline_times.append(time.perf_counter() - t0)

    benchmark.pedantic(step, setup=timed_baseline, rounds=7, warmup_rounds=1)
    seconds, gru4rec_seconds = benchmark.stats.stats.median, float(np.median(baseline_times[1:]))
    benchmark.extra_info["tokens_per_s"] = train_batch.n_tokens / seconds
    benchmark.extra_info["speedup_vs_gru4rec"] = gru4rec_seconds / seconds
    print(f"\n{name} on {device}: {train_batch.n_tokens / seconds:,.0f} tokens/s, "
          f"{gru4rec_seconds / seconds:.2f}x GRU4Rec")


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_loss_fused_vs_cross_entropy(benchmark, device):
    """Loss forward + backward on the throughput batch's 3,200 x 2,000 logits: ``linear_cross_entropy``
    (the softmax loss) against ``F.cross_entropy`` over the full logits, timed right before each round."""
    torch.manual_seed(0)
    n, dim = 3200, 128
    user_emb = torch.randn(n, dim, device=device, requires_grad=True)
    weight = (torch.randn(N_ITEMS, dim, device=device) * dim**-0.5).requires_grad_()
    bias = torch.zeros(N_ITEMS, device=device, requires_grad=True)
    targets = torch.randint(0, N_ITEMS, (n,), device=device)

    def fused():
        linear_cross_entropy(user_emb, weight, bias, targets).backward()
        synchronize(torch.device(device))

    baseline_times = []

    def timed_baseline():
        synchronize(torch.device(device))
        t0 = time.perf_counter()
        F.cross_entropy(torch.addmm(bias, user_emb, weight.t()), targets).backward()
        synchronize(torch.device(device))
        baseline_times.append(time.perf_counter() - t0)

    benchmark.pedantic(fused, setup=timed_baseline, rounds=9, warmup_rounds=1)
    speedup = float(np.median(baseline_times[1:])) / benchmark.stats.stats.median
    benchmark.extra_info["speedup_vs_cross_entropy"] = speedup
    print(f"\nlinear_cross_entropy on {device}: {speedup:.2f}x F.cross_entropy (forward + backward)")


def saved_activation_bytes(model, batch) -> int:
    """Bytes of distinct non-parameter tensors autograd keeps for backward during one forward."""
    state = model.init_state(batch.n_lanes, batch.items.device) if model.carries_state else None
    return saved_tensor_bytes(lambda: model(batch, state), exclude=list(model.parameters()))


def queue_slice(batch, windows_per_lane: int):
    """Each lane's first ``windows_per_lane`` windows: one batch of the official queue training (10 per lane)."""
    cu, ptr = batch.cu_seqlens, batch.lane_ptr
    keep = torch.cat([torch.arange(int(ptr[q]), min(int(ptr[q]) + windows_per_lane, int(ptr[q + 1])))
                      for q in range(batch.n_lanes)])
    lengths = cu.diff()[keep]
    tokens = torch.cat([torch.arange(int(cu[w]), int(cu[w + 1])) for w in keep.tolist()])
    per_lane = torch.minimum(ptr.diff(), torch.tensor(windows_per_lane))
    return type(batch)(
        items=batch.items[tokens], cu_seqlens=torch.cat([cu.new_zeros(1), lengths.cumsum(0)]),
        lane_ptr=torch.cat([ptr.new_zeros(1), per_lane.cumsum(0)]), new_user=batch.new_user[keep],
        gap=batch.gap[keep], target_mask=batch.target_mask[tokens], lane_user=batch.lane_user,
    )


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
@pytest.mark.parametrize("lengths", ["uniform", "xing"])
@pytest.mark.parametrize("device", DEVICES)
def test_activation_memory_hiertcn_vs_flat_tcn(benchmark, device, lengths, recompute):
    """HierTCN trains on queue batches (10 windows per lane, state carried); a flat model needs whole histories.

    ``uniform``: sessions of 1..20 items; ``xing``: session lengths drawn from the synthetic XING log
    (median 4). ``recompute``: HierTCN's and FlatTCN's TCN blocks keep only their input (both or neither).
    """
    session_lengths = xing_session_lengths() if lengths == "xing" else None
    (whole,) = list(user_batches(fixed_history_csr(8, 500, session_lengths=session_lengths), batch_users=8))
    queue = queue_slice(whole, 10).to(device)
    whole = whole.to(device)
    runs = {"hiertcn_queue": ("hiertcn", queue), "hiertcn_whole": ("hiertcn", whole),
            "flat_tcn_whole": ("flat_tcn", whole), "gru4rec_whole": ("gru4rec", whole)}
    memory = {}
    for key, (name, batch) in runs.items():
        torch.manual_seed(0)
        config = {"recompute": recompute} if name != "gru4rec" else {}
        memory[key] = saved_activation_bytes(build_model(name, n_items=N_ITEMS, **config).to(device), batch)
    torch.manual_seed(0)
    hier = build_model("hiertcn", n_items=N_ITEMS, recompute=recompute).to(device)
    benchmark.pedantic(lambda: saved_activation_bytes(hier, queue), rounds=1)
    benchmark.extra_info.update({f"{k}_bytes": v for k, v in memory.items()})
    benchmark.extra_info["queue_tokens"] = queue.n_tokens
    for key in ("hiertcn_queue", "hiertcn_whole"):
        benchmark.extra_info[f"{key}_over_flat_tcn"] = memory[key] / memory["flat_tcn_whole"]
    print(f"\n{device}, {lengths} sessions, {'recompute' if recompute else 'stored'}: saved activations, 8 users x 500 "
          f"events ({queue.n_tokens} tokens in the queue batch): "
          + ", ".join(f"{k} {v / 2**20:.2f} MiB ({v / memory['flat_tcn_whole']:.3f} of FlatTCN)"
                      for k, v in memory.items()))
