"""scripts/graph_step_probe.py without a GPU: the eager part runs (the capture needs CUDA, and says so)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_probe_runs_its_eager_part_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HIERTCN_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "graph_step_probe.py"), "--device", "cpu",
                           "--warmup", "1"], capture_output=True, text=True, env=env, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hiertcn batch: " in done.stdout and "graph capture: skipped" in done.stdout
