"""File the output of ``scripts/gpu_suite.sh`` under ``benchmarks/results/<date>-<device>-<commit>/``.

    python scripts/record_gpu_results.py RUN_DIR [--commit HASH] [--results benchmarks/results]

Copies the raw files (suite.log, meta.json, steps.tsv, cuda-tests.xml, bench-*.json) and writes
``summary.md``: the steps' exit statuses, the CUDA test counts and failures, and one table per
benchmark group (median time, time relative to the group's fastest, and each benchmark's
``extra_info``, where the races store their ratios). The commit is the one the suite recorded;
when the GPU machine had no git, pass ``--commit`` or let the current checkout's HEAD stand in
(the run tools copy the working tree, so that is what ran; ``-dirty`` marks uncommitted changes).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

RAW_FILES = ("suite.log", "meta.json", "steps.tsv", "cuda-tests.xml")


def _local_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], check=False).returncode != 0
    return head.stdout.strip() + ("-dirty" if dirty else "")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _format(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _test_section(path: Path) -> list[str]:
    if not path.exists():
        return ["No JUnit report (the test step did not finish writing one)."]
    suites = ET.parse(path).getroot()
    counts = defaultdict(int)
    failed = []
    for case in suites.iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        counts[outcome] += 1
        if outcome in ("failure", "error"):
            failed.append(f"- `{case.get('classname')}::{case.get('name')}` ({outcome})")
    line = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failure", "error", "skipped") if counts[k])
    return [line or "no tests ran", *failed]


def _bench_section(path: Path) -> list[str]:
    benchmarks = json.loads(path.read_text()).get("benchmarks", [])
    if not benchmarks:
        return [f"`{path.name}`: no benchmarks ran."]
    groups = defaultdict(list)
    for bench in benchmarks:
        groups[bench.get("group") or bench["name"]].append(bench)
    lines = []
    for group, members in groups.items():
        fastest = min(b["stats"]["median"] for b in members)
        lines += [f"#### {group}", "", "| benchmark | median ms | / fastest | extra_info |", "|---|---:|---:|---|"]
        for b in sorted(members, key=lambda b: b["stats"]["median"]):
            extra = ", ".join(f"{k}={_format(v)}" for k, v in b.get("extra_info", {}).items())
            median = b["stats"]["median"]
            lines.append(f"| `{b['name']}` | {median * 1e3:.3f} | {median / fastest:.2f} | {extra} |")
        lines.append("")
    return lines


def record(run_dir: Path, results: Path, commit: str | None = None) -> Path:
    meta_path = run_dir / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} is missing: is {run_dir} the output folder of scripts/gpu_suite.sh?")
    meta = json.loads(meta_path.read_text())
    commit = commit or (meta.get("commit") if meta.get("commit") not in (None, "", "unknown") else _local_commit())
    target = results / f"{meta['date'][:10]}-{_slug(meta['device'])}-{commit}"
    target.mkdir(parents=True, exist_ok=True)
    bench_files = sorted(run_dir.glob("bench-*.json"))
    for path in [run_dir / name for name in RAW_FILES] + bench_files:
        if path.exists():
            shutil.copy2(path, target / path.name)

    lines = [
        f"# GPU run {meta['date']} on {meta['device']}, commit {commit}", "",
        ", ".join(f"{k} {meta[k]}" for k in ("python", "torch", "torch_cuda", "triton", "cupy", "numba") if k in meta),
        "", "Raw output: `suite.log`; benchmark JSON: `bench-*.json` (pytest-benchmark).", "", "## Steps", "",
        "| step | exit status | seconds |", "|---|---|---:|",
    ]
    steps = run_dir / "steps.tsv"
    if steps.exists():
        with steps.open() as f:
            lines += [f"| {r['step']} | {r['exit_status']} | {r['seconds']} |" for r in csv.DictReader(f, delimiter="\t")]
    lines += ["", "## CUDA tests (`pytest -m cuda`)", "", *_test_section(run_dir / "cuda-tests.xml"), "", "## Benchmarks", ""]
    for path in bench_files:
        lines += [f"### `{path.name}`", "", *_bench_section(path)]
    (target / "summary.md").write_text("\n".join(lines).rstrip() + "\n")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the folder scripts/gpu_suite.sh wrote ($OUT)")
    parser.add_argument("--commit", help="commit that ran (default: recorded by the suite, else this checkout's HEAD)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="where result folders go")
    args = parser.parse_args(argv)
    print(record(args.run_dir, args.results, args.commit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
