"""Where models win and lose on the synthetic XING log: test metrics per kind of planted event.

    PYTHONPATH=. python benchmarks/breakdown_synthetic.py --data syn5k/interactions.csv \
        runs/acc5k/hiertcn/best.pt runs/acc5k/hrnn/best.pt

The generator (``hiertcn.data.synthetic``) writes the planted item topics to
``truth.npz`` next to the log. A session's topic is its first item's (the walk
starts on it). Every scored event falls in exactly one kind:

- ``first``: the first event of its session (only the long-term history predicts it);
- ``off_topic``: the target is off the session's topic (a noise click: popularity at best);
- ``after_off_topic``: on topic, right after a noise click (the walk continues from the item
  before it, so the model has to skip one step back);
- ``repeat``: the previous item again (a bookmark or reply);
- ``walk``: the rest, a step of the item-to-item walk from the previous item.

The dataset is prepared exactly as ``hiertcn compare`` prepares it (same preset, split and cache).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hiertcn.checkpoint import load_model
from hiertcn.data.prepare import prepare_dataset
from hiertcn.data.splits import TEST
from hiertcn.evaluate import score_events

KINDS = ("first", "off_topic", "after_off_topic", "repeat", "walk")


def event_kinds(csr, item_topic: np.ndarray) -> np.ndarray:
    """``(N,)`` index into KINDS for every interaction of ``csr``; ``item_topic`` is per dense item index."""
    topic = item_topic[csr.item]
    lengths = np.diff(csr.session_ptr)
    starts = csr.session_ptr[:-1]
    off = topic != np.repeat(topic[starts], lengths)
    first = np.zeros(len(topic), dtype=bool)
    first[starts] = True
    prev = np.concatenate([[-1], csr.item[:-1]])
    prev_off = np.concatenate([[False], off[:-1]])
    kind = np.full(len(topic), KINDS.index("walk"))
    # Later rules win, so the first matching rule of the docstring's order is the one applied.
    kind[(prev == csr.item)] = KINDS.index("repeat")
    kind[prev_off] = KINDS.index("after_off_topic")
    kind[off] = KINDS.index("off_topic")
    kind[first] = KINDS.index("first")
    return kind


def dense_item_topic(csr, truth_path: str | Path) -> np.ndarray:
    """Topic of each dense item index of ``csr``, from the generator's ``truth.npz``."""
    truth = np.load(truth_path)
    order = np.argsort(truth["item_id"])
    pos = np.searchsorted(truth["item_id"], csr.item_ids, sorter=order)
    return truth["item_topic"][order[pos]]


def breakdown(model, dataset, kinds: np.ndarray) -> dict[str, dict[str, float]]:
    """Per kind: number of scored test events, mrr and recall@10."""
    ranks, index = [], []
    for r, _, i in score_events(model, dataset.csr, dataset.role == TEST, impressions=dataset.impressions):
        ranks.append(r.numpy())
        index.append(i.numpy())
    ranks, kind = np.concatenate(ranks).astype(np.float64), kinds[np.concatenate(index)]
    out = {}
    for k, name in enumerate(("all", *KINDS)):
        mask = np.ones(len(kind), dtype=bool) if name == "all" else kind == k - 1
        n = int(mask.sum())
        out[name] = {"n": n, "mrr": float(np.mean(1 / ranks[mask])) if n else float("nan"),
                     "recall@10": float(np.mean(ranks[mask] <= 10)) if n else float("nan")}  # fmt: skip
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="synthetic interactions.csv (truth.npz beside it)")
    parser.add_argument("checkpoints", nargs="+", help="best.pt / last.pt of runs on that log")
    parser.add_argument(
        "--cache-dir", help="where prepared datasets are cached (as hiertcn compare's --cache-dir)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset, _ = prepare_dataset(args.data, cache_dir=args.cache_dir)
    kinds = event_kinds(dataset.csr, dense_item_topic(dataset.csr, Path(args.data).with_name("truth.npz")))
    results = {}
    for path in args.checkpoints:
        model, payload = load_model(path)
        results[f"{payload['model_name']} ({path})"] = breakdown(model, dataset, kinds)
    if args.json:
        print(json.dumps(results))
        return 0
    for name, rows in results.items():
        print(name)
        for kind, row in rows.items():
            print(f"  {kind:<16} n={row['n']:>6}  mrr {row['mrr']:.4f}  recall@10 {row['recall@10']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
