"""File the output of ``scripts/gpu_suite.sh`` under ``benchmarks/results/<date>-<device>-<commit>/``.

    python scripts/record_gpu_results.py RUN_DIR [--commit HASH] [--results benchmarks/results] [--force] [--dry-run]

Copies the raw files (suite.log, meta.json, steps.tsv, cuda-tests.xml, bench-*.json) and writes
``summary.md``: the steps' exit statuses, the CUDA test counts, failures and skip reasons, and one
table per benchmark group (median time, time relative to the group's fastest, and each benchmark's
``extra_info``, where the races store their ratios). The commit is the one the suite recorded;
when the GPU machine had no git, pass ``--commit`` or let the current checkout's HEAD stand in
(the run tools copy the working tree, so that is what ran; ``-dirty`` marks uncommitted changes).
The folder name takes its first 7 characters, like the other folders of ``benchmarks/results``.

An existing target folder is refused (its files would mix with this run's) unless ``--force``,
which empties it first. A run without a GPU (``meta.json`` device "no CUDA device", the suite's
``GPU_SUITE_DRY_RUN=1``) is refused unless ``--dry-run`` says that is what it is. Files are copied
without their modes: the fetched folder is read-only.
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
NO_DEVICE = "no CUDA device"  # what gpu_suite.sh writes as the device when torch sees no GPU
COMMIT_CHARS = 7


class RecordError(Exception):
    """A run folder that must not be filed as it is (the message says why and what to pass)."""


def _local_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], check=False).returncode != 0
    return head.stdout.strip() + ("-dirty" if dirty else "")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _short_commit(commit: str) -> str:
    """The first 7 characters of the hash, keeping a ``-dirty`` suffix."""
    head, dirty, _ = commit.partition("-dirty")
    return _slug(head[:COMMIT_CHARS] + ("-dirty" if dirty else ""))


def _format(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def junit_outcomes(path: Path) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, int]]:
    """``(counts by outcome, (test id, outcome) of each failed test, skip reasons with their counts)`` of a
    JUnit report (also read by ``gpu_suite.sh``'s closing summary)."""
    counts, failed, reasons = defaultdict(int), [], defaultdict(int)
    for case in ET.parse(path).getroot().iter("testcase"):
        child = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        outcome = "passed" if child is None else child.tag
        counts[outcome] += 1
        if outcome in ("failure", "error"):
            failed.append((f"{case.get('classname')}::{case.get('name')}", outcome))
        elif outcome == "skipped":
            reasons[child.get("message") or (child.text or "").strip() or "(no reason given)"] += 1
    return counts, failed, reasons


def count_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in ("passed", "failure", "error", "skipped") if counts[k])


def _test_section(path: Path) -> list[str]:
    if not path.exists():
        return ["No JUnit report (the test step did not finish writing one)."]
    counts, failed, reasons = junit_outcomes(path)
    failed = [f"- `{test}` ({outcome})" for test, outcome in failed]
    skips = ["", "Skipped, by reason:", ""] + [f"- {n} x {r}" for r, n in sorted(reasons.items(), key=lambda i: -i[1])]
    return [count_line(counts) or "no tests ran", *failed, *(skips if reasons else [])]


def _bench_section(path: Path) -> list[str]:
    text = path.read_text()
    try:
        benchmarks = json.loads(text).get("benchmarks", []) if text.strip() else []
    except ValueError:
        return [f"`{path.name}`: not valid JSON (its step was stopped while writing it?)."]
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


def record(run_dir: Path, results: Path, commit: str | None = None, *, force: bool = False,
           dry_run: bool = False) -> Path:
    meta_path = run_dir / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} is missing: is {run_dir} the output folder of scripts/gpu_suite.sh?")
    meta = json.loads(meta_path.read_text())
    no_gpu = meta.get("device") == NO_DEVICE or bool(meta.get("dry_run"))
    if no_gpu and not dry_run:
        raise RecordError(f"{run_dir} ran without a GPU (device {meta.get('device')!r}, dry_run "
                          f"{meta.get('dry_run', False)}): not GPU results; pass --dry-run to file it anyway")
    commit = commit or (meta.get("commit") if meta.get("commit") not in (None, "", "unknown") else _local_commit())
    kind = "dry-run" if no_gpu else _slug(meta["device"])
    target = results / f"{meta['date'][:10]}-{kind}-{_short_commit(commit)}"
    if target.exists():
        if not force:
            raise RecordError(f"{target} exists: pass --force to replace its contents (or move it away)")
        shutil.rmtree(target)
    target.mkdir(parents=True)
    bench_files = sorted(run_dir.glob("bench-*.json"))
    for path in [run_dir / name for name in RAW_FILES] + bench_files:
        if path.exists():
            shutil.copyfile(path, target / path.name)  # contents only: the fetched folder is read-only

    lines = [
        f"# GPU run {meta['date']} on {meta['device']}, commit {commit}"
        + (" (DRY RUN without a GPU: no GPU results)" if no_gpu else ""), "",
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
    if not bench_files:
        lines.append("No `bench-*.json`: no GPU benchmark finished (see `suite.log`).")
    (target / "summary.md").write_text("\n".join(lines).rstrip() + "\n")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the folder scripts/gpu_suite.sh wrote ($OUT)")
    parser.add_argument("--commit", help="commit that ran (default: recorded by the suite, else this checkout's HEAD)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="where result folders go")
    parser.add_argument("--force", action="store_true", help="replace an existing target folder's contents")
    parser.add_argument("--dry-run", action="store_true",
                        help="file a run without a GPU (GPU_SUITE_DRY_RUN=1; folder <date>-dry-run-<commit>)")
    args = parser.parse_args(argv)
    try:
        print(record(args.run_dir, args.results, args.commit, force=args.force, dry_run=args.dry_run))
    except (RecordError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
