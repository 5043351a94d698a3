"""scripts/record_gpu_results.py files a GPU suite's output and summarises it (fabricated run, no GPU)."""

import importlib.util
import json
import os
import stat
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "record_gpu_results.py"
spec = importlib.util.spec_from_file_location("record_gpu_results", SCRIPT)
record_gpu_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(record_gpu_results)

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.kernels.test_conv" name="test_a"/>
<testcase classname="tests.kernels.test_conv" name="test_b"><failure message="boom"/></testcase>
<testcase classname="tests.kernels.test_segment" name="test_c"><skipped message="no cupy"/></testcase>
<testcase classname="tests.kernels.test_segment" name="test_d"><skipped message="no cupy"/></testcase>
<testcase classname="tests.kernels.test_csrc" name="test_e"><skipped type="pytest.skip">needs nvcc</skipped></testcase>
</testsuite></testsuites>"""
H100 = {"date": "2026-11-23T12:00:00Z", "device": "NVIDIA H100 80GB HBM3", "commit": "abc1234def56", "torch": "2.13.0"}


def _bench(name, median, **extra):
    return {"group": "cuda tcn_block d=1", "name": name, "stats": {"median": median}, "extra_info": extra}


def _run(tmp_path, meta=H100, files=None):
    """A fabricated suite output folder: meta.json plus ``files`` (name: text)."""
    run = tmp_path / "out"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps(meta))
    for name, text in (files or {}).items():
        (run / name).write_text(text)
    return run


def test_record_copies_raw_files_and_summarises(tmp_path):
    benchmarks = [_bench("test_x[triton]", 0.002, speedup=3.5), _bench("test_x[cuda_c]", 0.004)]
    run = _run(tmp_path, files={
        "steps.tsv": "step\texit_status\tseconds\ncuda-tests\t1\t42\nbench-csrc\t124\t60\n", "suite.log": "raw log\n",
        "cuda-tests.xml": JUNIT, "bench-csrc.json": json.dumps({"benchmarks": benchmarks})})
    assert {p.name for p in run.iterdir()} == {
        "meta.json", "steps.tsv", "suite.log", "cuda-tests.xml", "bench-csrc.json"}

    target = record_gpu_results.record(run, tmp_path / "results")

    assert target == tmp_path / "results" / "2026-11-23-nvidia-h100-80gb-hbm3-abc1234"  # 7-character commit
    assert {p.name for p in target.iterdir()} == {
        "meta.json", "steps.tsv", "suite.log", "cuda-tests.xml", "bench-csrc.json", "summary.md"}
    summary = (target / "summary.md").read_text()
    assert "commit abc1234def56" in summary
    assert "| bench-csrc | 124 | 60 |" in summary
    assert "1 passed, 1 failure, 3 skipped" in summary
    assert "`tests.kernels.test_conv::test_b` (failure)" in summary
    assert "- 2 x no cupy" in summary and "- 1 x needs nvcc" in summary
    assert "| `test_x[triton]` | 2.000 | 1.00 | speedup=3.5 |" in summary
    assert "| `test_x[cuda_c]` | 4.000 | 2.00 |  |" in summary


def test_record_commit_override(tmp_path):
    run = _run(tmp_path, {"date": "2026-11-23T12:00:00Z", "device": "H200", "commit": "unknown"})
    target = record_gpu_results.record(run, tmp_path / "results", commit="feed42")
    assert target.name == "2026-11-23-h200-feed42"
    assert "No JUnit report" in (target / "summary.md").read_text()
    assert "No `bench-*.json`" in (target / "summary.md").read_text()
    dirty = record_gpu_results.record(run, tmp_path / "results", commit="0123456789ab-dirty")
    assert dirty.name == "2026-11-23-h200-0123456-dirty"


def test_record_copies_from_a_read_only_folder_into_writable_files(tmp_path):
    run = _run(tmp_path, files={"suite.log": "raw log\n", "bench-conv.json": ""})  # pytest-benchmark left it empty
    for path in run.iterdir():
        path.chmod(0o444)
    run.chmod(0o555)
    try:
        target = record_gpu_results.record(run, tmp_path / "results")
    finally:
        run.chmod(0o755)
    for path in target.iterdir():
        assert path.stat().st_mode & stat.S_IWUSR, f"{path.name} kept the read-only mode"
    assert "`bench-conv.json`: no benchmarks ran." in (target / "summary.md").read_text()


def test_record_refuses_an_existing_folder_unless_forced(tmp_path, capsys):
    run = _run(tmp_path, files={"suite.log": "new log\n"})
    target = tmp_path / "results" / "2026-11-23-nvidia-h100-80gb-hbm3-abc1234"
    target.mkdir(parents=True)
    (target / "bench-stale.json").write_text("{}")
    with pytest.raises(record_gpu_results.RecordError, match="exists: pass --force"):
        record_gpu_results.record(run, tmp_path / "results")
    assert record_gpu_results.main([str(run), "--results", str(tmp_path / "results")]) == 2
    assert "--force" in capsys.readouterr().err
    assert record_gpu_results.main([str(run), "--results", str(tmp_path / "results"), "--force"]) == 0
    assert not (target / "bench-stale.json").exists()  # no stale files mixed in
    assert (target / "suite.log").read_text() == "new log\n"


@pytest.mark.parametrize("meta", [{"device": "no CUDA device"}, {"device": "NVIDIA H200", "dry_run": True}])
def test_record_refuses_a_run_without_gpu_unless_dry_run(tmp_path, meta):
    run = _run(tmp_path, {"date": "2026-11-30T09:00:00Z", "commit": "6fdd1b9abc", **meta})
    with pytest.raises(record_gpu_results.RecordError, match="without a GPU.*--dry-run"):
        record_gpu_results.record(run, tmp_path / "results")
    assert not (tmp_path / "results").exists()
    target = record_gpu_results.record(run, tmp_path / "results", dry_run=True)
    assert target.name == "2026-11-30-dry-run-6fdd1b9"
    assert "DRY RUN without a GPU" in (target / "summary.md").read_text()


def test_main_reports_a_folder_that_is_no_suite_output(tmp_path, capsys):
    assert record_gpu_results.main([str(tmp_path), "--results", os.fspath(tmp_path / "r")]) == 2
    assert "meta.json is missing" in capsys.readouterr().err
