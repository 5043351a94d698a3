"""scripts/gpu_suite.sh without a GPU: the gate stops the suite; GPU_SUITE_DRY_RUN=1 runs its plumbing on CPU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "scripts" / "gpu_suite.sh"
spec = importlib.util.spec_from_file_location("record_gpu_results", ROOT / "scripts" / "record_gpu_results.py")
record_gpu_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(record_gpu_results)
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the suite's paths on a machine without CUDA")


def run_suite(out, **env):
    """Run the suite into ``out`` with this interpreter's ``python3`` first on PATH; (exit status, steps)."""
    full_env = {**os.environ, "OUT": str(out), "HIERTCN_COMMIT": "6fdd1b9abcdef",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    done = subprocess.run(["bash", str(SUITE)], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300,
                          check=False)
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    return done, {name: status for name, status, _ in steps}


def test_suite_parses():
    subprocess.run(["bash", "-n", str(SUITE)], check=True)


@cpu_only
def test_gate_stops_the_suite_without_cuda(tmp_path):
    done, steps = run_suite(tmp_path, GPU_SUITE_DRY_RUN="0")
    assert done.returncode == 3, done.stdout + done.stderr
    assert steps == {"device-info": "0", "gate": "1", "suite": "stopped: gate failed"}
    log = (tmp_path / "suite.log").read_text()
    assert "torch.cuda.is_available() is False" in log and "GATE FAILED" in log
    assert "WARNING: the gate failed" in log
    assert not (tmp_path / "cuda-tests.xml").exists()
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["device"] == "no CUDA device" and meta["commit"] == "6fdd1b9abcdef" and not meta["dry_run"]
    with pytest.raises(record_gpu_results.RecordError, match="without a GPU"):
        record_gpu_results.record(tmp_path, tmp_path / "results")


@cpu_only
@pytest.mark.slow
def test_dry_run_runs_every_step_and_reports_skips(tmp_path):
    """A cut-down dry run (about 30 s): one test file and the models benchmarks, whose cuda variants the
    suite's -k selects (they skip here: exit status 0, where a file with none selected gives 5)."""
    out = tmp_path / "out"
    done, steps = run_suite(out, GPU_SUITE_DRY_RUN="1", GPU_SUITE_TEST_FILES="tests/kernels/test_csrc_segment.py",
                            GPU_SUITE_BENCH_FILES="models")
    assert done.returncode == 0, done.stdout + done.stderr
    assert steps == {"device-info": "0", "gate": "0", "cuda-tests": "0", "bench-models": "0", "profile": "skipped",
                     "bench-32": "skipped", "bench-256": "skipped", "train-32": "skipped",
                     "graph-probe": "skipped", "tune": "skipped"}
    log = (out / "suite.log").read_text()
    assert "gate: triton tcn_block relu fwd+bwd: ok" in log and "gate: triton segment_reduce mean fwd+bwd: ok" in log
    assert "cuda tests skipped, by reason:" in log
    assert "WARNING: bench-models.json is missing" in log
    assert "slowest 15 durations" in log  # --durations=15
    assert set(os.listdir(out)) <= {"suite.log", "meta.json", "steps.tsv", "cuda-tests.xml", "bench-models.json"}
    assert json.loads((out / "meta.json").read_text())["dry_run"] is True
    target = record_gpu_results.record(out, tmp_path / "results", dry_run=True)
    assert target.name.endswith("-dry-run-6fdd1b9")
    assert "skipped" in (target / "summary.md").read_text()
