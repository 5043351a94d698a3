"""Where HierTCN's CPU training step time went: each change of issue 5 switched on in turn, interleaved.

    PYTHONPATH=. python benchmarks/ablate_hiertcn_step.py --rounds 9

One Adam step (forward, full softmax, backward) on the throughput benchmark's batch
(``tests/benchmarks/test_bench_models.py``: 32 users x 100 events, sessions of 1..20
items, 2,000 items). Variants, cumulative: ``levels=4`` with ``F.cross_entropy`` over
the full logits, every TCN block padding its own input into power-of-two length buckets
for ``F.conv1d`` and ``torch.segment_reduce``'s autograd (the code before issue 5); then
``levels=2``; the fused loss; the segment sum keeping no copy of its input; the packed
conv as one matmul over each row's taps (today's code). (An intermediate step, all blocks
on buckets padded once, was replaced by the last and is not rebuilt here.) GRU4Rec runs
with both losses. Every round runs each variant once in turn, so machine load hits all alike;
medians are reported, and each HierTCN variant's speed-up over GRU4Rec with the same loss.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "benchmarks"))
from test_bench_models import N_ITEMS

from hiertcn.batching import user_batches
from hiertcn.bench import fixed_history_csr
from hiertcn.losses import build_loss
from hiertcn.models import build_model
from hiertcn_kernels import reference


@contextlib.contextmanager
def before_issue5(bucketed: bool, segment_autograd: bool):
    """Switch the packed conv and the segment sum back to their previous reference implementations."""
    conv, segment_sum = reference._causal_conv1d_packed, reference._SegmentSum.apply
    if bucketed:
        reference._causal_conv1d_packed = reference.conv_by_buckets
    if segment_autograd:
        reference._SegmentSum.apply = lambda values, lengths: torch.segment_reduce(values, "sum", lengths=lengths)
    try:
        yield
    finally:
        reference._causal_conv1d_packed, reference._SegmentSum.apply = conv, segment_sum


def cross_entropy(model, user_emb, targets):
    return F.cross_entropy(model.scores(user_emb), targets)


def make_step(name, batch, loss_fn, **config):
    torch.manual_seed(0)
    model = build_model(name, n_items=N_ITEMS, **config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        state = model.init_state(batch.n_lanes) if model.carries_state else None
        loss = loss_fn(model, model(batch, state)[0], batch.items)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    (batch,) = list(user_batches(fixed_history_csr(32, 100), batch_users=32))
    fused = build_loss("softmax")
    variants = {  # name: (step, bucketed conv, segment_autograd, GRU4Rec variant with the same loss)
        "gru4rec, F.cross_entropy": (make_step("gru4rec", batch, cross_entropy), False, False, None),
        "gru4rec, fused loss": (make_step("gru4rec", batch, fused), False, False, None),
        "hiertcn before (levels=4)": (make_step("hiertcn", batch, cross_entropy, levels=4), True, True,
                                      "gru4rec, F.cross_entropy"),
        "+ levels=2": (make_step("hiertcn", batch, cross_entropy), True, True, "gru4rec, F.cross_entropy"),
        "+ fused loss": (make_step("hiertcn", batch, fused), True, True, "gru4rec, fused loss"),
        "+ segment sum keeps no input": (make_step("hiertcn", batch, fused), True, False, "gru4rec, fused loss"),
        "+ packed conv, one matmul over the taps (now)": (make_step("hiertcn", batch, fused), False, False,
                                                          "gru4rec, fused loss"),
    }
    times = {name: [] for name in variants}
    for _ in tqdm(range(args.rounds + 1), desc="rounds"):  # the first round warms up
        for name, (step, bucketed, segment, _) in variants.items():
            with before_issue5(bucketed, segment):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(t[1:]) for name, t in times.items()}
    print(f"torch threads {torch.get_num_threads()}, {batch.n_tokens} tokens per step, {args.rounds} rounds")
    print("| variant | ms per step (median) | tokens/s | vs GRU4Rec, same loss |")
    print("|---|---|---|---|")
    for name, (_, _, _, baseline) in variants.items():
        ratio = f"{median[baseline] / median[name]:.2f}x" if baseline else ""
        print(f"| {name} | {median[name] * 1e3:.1f} | {batch.n_tokens / median[name]:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
