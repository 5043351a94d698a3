"""A training process killed with SIGKILL mid-run resumes to the same result as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hiertcn.data.synthetic import generate_xing

ROOT = Path(__file__).resolve().parents[2]

SMALL = """
n_queues = 4
batch_users = 8
[model_config.hiertcn]
embedding_dim = 8
hidden_dim = 8
channels = 8
levels = 2
"""


def train_cmd(data, out, cache, config, *extra):
    return [sys.executable, "-m", "hiertcn", "train", "--data", str(data), "--preset", "none",
            "--cache-dir", str(cache), "--config", str(config), "--out", str(out), "--epochs", "3",
            "--seed", "0", "--threads", "1", "--checkpoint-every", "1", "--quiet", "--json", *extra]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_run_resumes_to_the_uninterrupted_metrics(tmp_path):
    files = generate_xing(tmp_path / "log", n_users=80, n_items=150, n_topics=8, seed=3)
    config = tmp_path / "small.toml"
    config.write_text(SMALL)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cache = tmp_path / "cache"

    full = subprocess.run(train_cmd(files.interactions, tmp_path / "full", cache, config),
                          env=env, capture_output=True, text=True, check=True)  # fmt: skip
    expected = json.loads(full.stdout.strip().splitlines()[-1])

    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(files.interactions, out, cache, config), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "metrics.json").exists()

    resumed = subprocess.run(train_cmd(files.interactions, out, cache, config, "--resume"),
                             env=env, capture_output=True, text=True, check=True)  # fmt: skip
    got = json.loads(resumed.stdout.strip().splitlines()[-1])
    for key in ("recall@1", "recall@10", "mrr", "mrp", "steps", "epochs"):
        assert got[key] == expected[key], key
