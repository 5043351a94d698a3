"""examples/train_xing.py end to end on a small synthetic XING log."""

import importlib.util
import json
from pathlib import Path

import torch

from hiertcn.data.synthetic import generate_xing

EXAMPLE = Path(__file__).parents[2] / "examples" / "train_xing.py"


def test_train_xing_example_runs_and_its_checkpoints_find_the_data(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_xing", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    generate_xing(tmp_path / "xing", n_users=150, n_items=120, seed=1)
    monkeypatch.chdir(tmp_path)  # relative paths, as a user would type them
    assert example.main(["xing/interactions.csv", "--out", "run", "--epochs", "1", "--models", "moving_average",
                         "--threads", "1"]) == 0  # fmt: skip
    assert 0 < json.loads((tmp_path / "run" / "metrics.json").read_text())["moving_average"]["mrr"] <= 1
    config = torch.load(tmp_path / "run" / "moving_average" / "best.pt", weights_only=False)["config"]
    assert config["data"] == str(tmp_path / "xing" / "interactions.csv")  # evaluate works from any folder
    assert config["cache_dir"] == str(tmp_path / "run" / "cache")
