"""Accuracy of HierTCN and the baselines on the synthetic XING log, same data, same number of epochs each.

    PYTHONPATH=. python benchmarks/compare_synthetic.py --epochs 2 --users 1000

Deletes (type 4) dropped, 1800 s session gap, last session of each user held
out as test; every model trains on whole-user batches of the training sessions
with full softmax for ``--epochs`` passes over the users (Adam, the release's
learning rate 1e-2; epochs, not wall time, so a busy machine cannot skew the
comparison; ``--seconds`` optionally caps each model), then is ranked against the
full catalogue on every test event (per-event metrics primary). Dims are
halved from the official ones so a CPU finishes in minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from hiertcn.batching import user_batches
from hiertcn.data.readers import read_log
from hiertcn.data.splits import TEST
from hiertcn.data.synthetic import generate_xing
from hiertcn.evaluate import evaluate
from hiertcn.losses import build_loss
from hiertcn.models import MODEL_NAMES, build_model
from hiertcn_kernels import pack_sessions

SMALL = {
    "hiertcn": {"embedding_dim": 64, "hidden_dim": 64, "channels": 64, "levels": 2},
    "moving_average": {"embedding_dim": 64},
    "gru4rec": {"embedding_dim": 64, "hidden_dim": 100},
    "flat_tcn": {"embedding_dim": 64, "channels": (64, 64, 64, 64, 128, 128)},
    "hrnn": {"embedding_dim": 64, "session_dim": 64, "user_dim": 64},
}


def synthetic_split(n_users: int, seed: int):
    with tempfile.TemporaryDirectory() as tmp:
        files = generate_xing(tmp, n_users=n_users, seed=seed, impressions=False)
        log = read_log(files.interactions, "xing")
    log = log.select(log.interaction_type != 4)
    csr = pack_sessions(log.user, log.item, log.timestamp, session_gap=1800)
    role = np.zeros(csr.n_sessions, dtype=np.int64)
    role[csr.user_ptr[1:] - 1] = TEST  # last session out
    return csr, role


def train(name, csr, role, epochs, seconds, seed, lr=1e-2):
    torch.manual_seed(seed)
    model = build_model(name, n_items=csr.n_items, **SMALL[name])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = build_loss("softmax")
    rng = np.random.default_rng(seed)
    deadline, steps, tokens = time.perf_counter() + (seconds or float("inf")), 0, 0
    with tqdm(desc=name, unit="step") as bar:
        for _ in range(epochs):
            order = rng.permutation(csr.n_users)
            for batch in user_batches(csr, order, score_sessions=role != TEST, batch_users=32):
                user_emb, _ = model(batch, None)
                mask = batch.target_mask
                loss = loss_fn(model, user_emb[mask], batch.items[mask])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps, tokens = steps + 1, tokens + int(mask.sum())
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if time.perf_counter() >= deadline:
                    break
            if time.perf_counter() >= deadline:
                break
    return model, steps, tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training users per model")
    parser.add_argument("--seconds", type=float, default=None, help="optional cap on training wall time per model")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    csr, role = synthetic_split(args.users, args.seed)
    print(f"log: {csr.n_users} users, {csr.n_sessions} sessions, {csr.n_interactions} events, {csr.n_items} items")
    results = {}
    for name in args.models.split(","):
        model, steps, tokens = train(name, csr, role, args.epochs, args.seconds, args.seed)
        metrics = evaluate(model, (csr, role), batch_users=64)
        results[name] = {**metrics, "train_steps": steps, "train_tokens": tokens}
        print(name, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    keys = ["recall@1", "recall@5", "recall@10", "recall@20", "mrr", "mrp", "user/recall@10", "user/mrr", "train_steps"]
    print("| model | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, m in results.items():
        print(f"| {name} | " + " | ".join(f"{m[k]:.4f}" if isinstance(m[k], float) else str(m[k]) for k in keys) + " |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
