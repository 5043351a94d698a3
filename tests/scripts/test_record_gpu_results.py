"""scripts/record_gpu_results.py files a GPU suite's output and summarises it (fabricated run, no GPU)."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "record_gpu_results.py"
spec = importlib.util.spec_from_file_location("record_gpu_results", SCRIPT)
record_gpu_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(record_gpu_results)

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.kernels.test_conv" name="test_a"/>
<testcase classname="tests.kernels.test_conv" name="test_b"><failure message="boom"/></testcase>
<testcase classname="tests.kernels.test_segment" name="test_c"><skipped message="no cupy"/></testcase>
</testsuite></testsuites>"""


def _bench(name, median, **extra):
    return {"group": "cuda tcn_block d=1", "name": name, "stats": {"median": median}, "extra_info": extra}


def test_record_copies_raw_files_and_summarises(tmp_path):
    run = tmp_path / "out"
    run.mkdir()
    meta = {"date": "2026-11-23T12:00:00Z", "device": "NVIDIA H100 80GB HBM3", "commit": "abc123", "torch": "2.13.0"}
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "steps.tsv").write_text("step\texit_status\tseconds\ncuda-tests\t1\t42\nbench-csrc\t124\t60\n")
    (run / "suite.log").write_text("raw log\n")
    (run / "cuda-tests.xml").write_text(JUNIT)
    benchmarks = [_bench("test_x[triton]", 0.002, speedup=3.5), _bench("test_x[cuda_c]", 0.004)]
    (run / "bench-csrc.json").write_text(json.dumps({"benchmarks": benchmarks}))

    target = record_gpu_results.record(run, tmp_path / "results")

    assert target == tmp_path / "results" / "2026-11-23-nvidia-h100-80gb-hbm3-abc123"
    assert {p.name for p in target.iterdir()} == {
        "meta.json", "steps.tsv", "suite.log", "cuda-tests.xml", "bench-csrc.json", "summary.md"}
    summary = (target / "summary.md").read_text()
    assert "| bench-csrc | 124 | 60 |" in summary
    assert "1 passed, 1 failure, 1 skipped" in summary
    assert "`tests.kernels.test_conv::test_b` (failure)" in summary
    assert "| `test_x[triton]` | 2.000 | 1.00 | speedup=3.5 |" in summary
    assert "| `test_x[cuda_c]` | 4.000 | 2.00 |  |" in summary


def test_record_commit_override(tmp_path):
    run = tmp_path / "out"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"date": "2026-11-23T12:00:00Z", "device": "H200", "commit": "unknown"}))
    target = record_gpu_results.record(run, tmp_path / "results", commit="feed42")
    assert target.name == "2026-11-23-h200-feed42"
    assert "No JUnit report" in (target / "summary.md").read_text()
