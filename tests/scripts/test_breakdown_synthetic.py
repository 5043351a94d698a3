"""benchmarks/breakdown_synthetic.py: planted event kinds and the per-kind test metrics."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from hiertcn.checkpoint import save_checkpoint
from hiertcn.data.prepare import prepare_dataset
from hiertcn.data.splits import TEST
from hiertcn.data.synthetic import generate_xing
from hiertcn.models import build_model
from hiertcn_kernels.packing import SessionCSR

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "breakdown_synthetic.py"
spec = importlib.util.spec_from_file_location("breakdown_synthetic", SCRIPT)
breakdown_synthetic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(breakdown_synthetic)
KINDS = breakdown_synthetic.KINDS


def test_event_kinds_follow_the_planted_topics():
    # Items 0-3 are topic 0, items 4-5 topic 1. Session A (topic 0): 0 1 1 4 2 5; session B (topic 1): 4 0 4.
    items = [0, 1, 1, 4, 2, 5, 4, 0, 4]
    csr = SessionCSR(
        user_ptr=np.array([0, 2]), session_ptr=np.array([0, 6, 9]), item=np.array(items),
        timestamp=np.arange(9), user_ids=np.array([7]), item_ids=np.arange(6),
    )  # fmt: skip
    kinds = breakdown_synthetic.event_kinds(csr, np.array([0, 0, 0, 0, 1, 1]))
    expected = ["first", "walk", "repeat", "off_topic", "after_off_topic", "off_topic",
                "first", "off_topic", "after_off_topic"]  # fmt: skip
    assert [KINDS[k] for k in kinds] == expected


def test_breakdown_covers_every_test_event(tmp_path, capsys):
    files = generate_xing(tmp_path / "log", n_users=300, n_items=60, n_topics=6, seed=2)
    cache = tmp_path / "cache"
    dataset, _ = prepare_dataset(files.interactions, cache_dir=cache)
    topic = breakdown_synthetic.dense_item_topic(dataset.csr, files.truth)
    truth = np.load(files.truth)
    assert topic.tolist() == [
        int(truth["item_topic"][truth["item_id"] == i][0]) for i in dataset.csr.item_ids
    ]

    torch.manual_seed(0)
    config = {"embedding_dim": 8, "hidden_dim": 8, "channels": 8}
    model = build_model("hiertcn", n_items=dataset.csr.n_items, **config)
    ckpt = save_checkpoint(tmp_path / "best.pt", {"model_name": "hiertcn", "n_items": dataset.csr.n_items,
                                                  "model_config": config, "model": model.state_dict()})  # fmt: skip
    out = breakdown_synthetic.breakdown(
        model.eval(), dataset, breakdown_synthetic.event_kinds(dataset.csr, topic)
    )
    n_test = int(np.diff(dataset.csr.session_ptr)[dataset.role == TEST].sum())
    assert out["all"]["n"] == n_test == sum(out[k]["n"] for k in KINDS)
    assert out["first"]["n"] == int((dataset.role == TEST).sum())
    assert all(out[k]["n"] > 0 and 0 < out[k]["mrr"] <= 1 for k in ("all", "first", "walk"))

    argv = ["--data", str(files.interactions), "--cache-dir", str(cache), str(ckpt)]
    assert breakdown_synthetic.main(argv) == 0 and "after_off_topic" in capsys.readouterr().out
    assert breakdown_synthetic.main([*argv, "--json"]) == 0
    (printed,) = json.loads(capsys.readouterr().out).values()
    assert printed == out
