"""``hiertcn train`` on a tiny synthetic XING log with impressions: hinge negatives, has_impression."""

import json

import pytest
import torch

from hiertcn import cli
from hiertcn.checkpoint import load_checkpoint
from hiertcn.data import generate_xing
from hiertcn.losses import HingeLoss

SMALL = """
n_queues = 4
lr = 0.02
epochs = 1
threads = 1
[model_config.hiertcn]
embedding_dim = 8
hidden_dim = 8
channels = 8
levels = 2
has_impression = true
"""


@pytest.fixture(scope="module")
def xing(tmp_path_factory):
    return generate_xing(
        tmp_path_factory.mktemp("xing"), n_users=40, n_items=30, n_topics=3, n_impressed=6, seed=2
    )


def test_train_hinge_on_impressed_negatives(xing, tmp_path, monkeypatch, capsys):
    seen = []
    compute = HingeLoss.compute

    def spy(self, model, user_emb, targets, impressions):
        seen.append(impressions)
        return compute(self, model, user_emb, targets, impressions)

    monkeypatch.setattr(HingeLoss, "compute", spy)
    config = tmp_path / "small.toml"
    config.write_text(SMALL)
    out = tmp_path / "run"
    cache = str(tmp_path / "cache")
    args = ["train", "--data", str(xing.interactions), "--preset", "none", "--cache-dir", cache,
            "--config", str(config), "--loss", "hinge", "--out", str(out), "--quiet", "--json"]  # fmt: skip
    assert cli.main(args) == 0  # impressions.csv next to interactions.csv is picked up ("auto")
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics == json.loads((out / "metrics.json").read_text()) and metrics["steps"] > 0
    # Every training step handed the hinge (n, 20) impressed items: up to 6 per target, -1 pads.
    assert len(seen) == metrics["steps"] and all(imp is not None and imp.shape[1] == 20 for imp in seen)
    shown = torch.cat([(imp >= 0).sum(1) for imp in seen])
    assert shown.max() <= 6 and (shown > 0).float().mean() > 0.9
    saved = load_checkpoint(out / "best.pt")
    assert saved["model_config"]["has_impression"] is True

    # evaluate reads the checkpoint (and the impressions) back
    assert (
        cli.main(["evaluate", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "ev"), "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mrr"] == metrics["mrr"]

    # Without impressions, a model that reads them stops with a clear error.
    assert cli.main([*args[:-4], "--impressions", "none", "--out", str(tmp_path / "none"), "--quiet"]) == 2
    assert "has_impression" in capsys.readouterr().err


def test_prepare_reports_the_impressions(xing, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    prepare = ["prepare", "--data", str(xing.interactions), "--preset", "none", "--cache-dir", cache, "--json"]
    assert cli.main(prepare) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < summary["impressions"] <= 6 * summary["interactions"]
    assert cli.main([*prepare, "--impressions", "none"]) == 0
    assert "impressions" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
