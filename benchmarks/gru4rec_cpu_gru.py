"""GRU4Rec's CPU step: torch's packed GRU (before 2026-12-01) against the GRU in time chunks (today's).

    PYTHONPATH=. python benchmarks/gru4rec_cpu_gru.py --rounds 5

One Adam step (forward, full softmax, backward) of GRU4Rec at the release's sizes, one thread, on:
the first training batch of the default synthetic log (what ``hiertcn bench`` times: 32 whole users);
the 32 x 100-event batch of the throughput benchmark; and one user of 500 / 1,000 / 2,000 events
(torch's packed GRU backward is quadratic in the longest history on the CPU). Every round runs each
variant once in turn; medians, and the packed step's time over the chunked one's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hiertcn.batching import user_batches
from hiertcn.bench import fixed_history_csr, model_step
from hiertcn.cli import load_dataset
from hiertcn.config import Config
from hiertcn.models import baselines
from hiertcn.train import training_loss


def packed_gru(gru, padded, lengths, chunk=None):
    """What GRU4Rec ran on the CPU before: torch's packed GRU."""
    out = gru(nn.utils.rnn.pack_padded_sequence(padded, lengths.cpu(), batch_first=True, enforce_sorted=False))[0]
    return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = Config(device="cpu")
    dataset, _ = load_dataset(config, echo=lambda *a, **k: None)
    loss_fn = training_loss(config.loss, dataset)
    n_items = dataset.csr.n_items
    batches = {"first training batch": None,
               "32 users x 100 events": next(iter(user_batches(fixed_history_csr(32, 100, n_items=n_items),
                                                               batch_users=32)))}  # fmt: skip
    for length in (500, 1000, 2000):
        batches[f"1 user x {length} events"] = next(iter(user_batches(fixed_history_csr(1, length, n_items=n_items))))
    chunked = baselines.gru_in_time_chunks
    for label, batch in batches.items():
        step, _, batch = model_step("gru4rec", dataset, config, loss_fn, torch.device("cpu"), batch)
        times = {"packed": [], "chunks": []}
        for _ in range(args.rounds + 1):  # the first round warms up
            for name, gru_fn in (("packed", packed_gru), ("chunks", chunked)):
                baselines.gru_in_time_chunks = gru_fn
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        baselines.gru_in_time_chunks = chunked
        packed, chunks = (statistics.median(times[k][1:]) for k in ("packed", "chunks"))
        print(f"{label:24s} {batch.n_tokens:6d} tokens: packed {1e3 * packed:8.1f} ms, chunks {1e3 * chunks:8.1f} ms,"
              f" packed / chunks {packed / chunks:.2f}", flush=True)


if __name__ == "__main__":
    main()
