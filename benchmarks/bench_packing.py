"""Throughput and peak memory of pack_sessions vs the pandas packer, one fresh process per run.

    PYTHONPATH=. python benchmarks/bench_packing.py --n 10000000                 # generate_xing log
    PYTHONPATH=. python benchmarks/bench_packing.py --n 10000000 --source random # synthetic_log below

By default both sources run. ``--source xing``: the project's synthetic XING log
(``hiertcn.data.synthetic.generate_xing``, real multi-event sessions, rows in
time order), generated once into a temporary directory, its CSV read once with
pandas and stored as ``.npy`` files that every child loads (the first ``--n``
rows). ``--source random``: ``synthetic_log`` (uniform random users and times:
nearly every event is its own session).

Each implementation runs in its own subprocess (``--repeats`` of them per
row, implementations alternating round by round; the median run by wall time
is reported) so peak RSS is its own: the child builds or loads the log, warms up (Numba cache / pandas import), resets
the kernel's peak-RSS counter (``/proc/self/clear_refs``), packs once and reads
``VmHWM``. ``peak/inputs`` is (RSS of the inputs + packing peak over them) /
bytes of the int64 input arrays: the 4x memory budget.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_log(n: int, seed: int = 0, time_order: str = "shuffled", id_step: int = 7):
    """XING-like: ~20 events per user, Zipf-ish item popularity, 80 days of timestamps.

    Raw ids are multiples of ``id_step``; a huge step (sparse, hashed-looking
    ids) sends pack_sessions down its radix path.
    """
    rng = np.random.default_rng(seed)
    user = rng.integers(0, max(1, n // 20), n) * id_step + 1000
    item = (rng.zipf(1.3, n) % 1_000_000) * id_step
    timestamp = rng.integers(1_600_000_000, 1_600_000_000 + 80 * 86400, n)
    if time_order == "sorted":
        timestamp.sort()
    return user, item, timestamp


def warmup_logs():
    """Small logs that take each of pack_sessions' paths (dense ids: fused; sparse items; sparse users: radix)."""
    rng = np.random.default_rng(1)
    dense = (rng.integers(0, 50, 1000), rng.integers(0, 100, 1000), rng.integers(0, 10_000, 1000))
    return [dense, synthetic_log(1000), synthetic_log(1000, id_step=2**40)]


def write_xing_arrays(n: int, out_dir: Path, seed: int = 0) -> Path:
    """Generate a generate_xing log of at least ``n`` interactions; store its first ``n`` rows as .npy files."""
    import pandas as pd

    from hiertcn.data.synthetic import generate_xing

    n_users = max(10, int(n / 57))  # generate_xing defaults give ~57 interactions per user
    while True:
        files = generate_xing(out_dir / "xing", n_users=n_users, n_items=max(100, n // 80),
                              n_topics=max(60, n // 3200), seed=seed, impressions=False)
        df = pd.read_csv(files.interactions, sep="\t", usecols=["user_id", "item_id", "created_at"])
        if len(df) >= n:
            break
        n_users = int(n_users * 1.2 * n / len(df)) + 1
    for name, col in (("user", "user_id"), ("item", "item_id"), ("timestamp", "created_at")):
        np.save(out_dir / f"{name}.npy", df[col].to_numpy(np.int64)[:n])
    return out_dir


def load_log(source: str, n: int, time_order: str, id_step: int, data_dir: str | None):
    if source == "random":
        return synthetic_log(n, time_order=time_order, id_step=id_step)
    user, item, timestamp = (np.load(Path(data_dir) / f"{name}.npy") for name in ("user", "item", "timestamp"))
    if time_order == "shuffled":
        order = np.random.default_rng(0).permutation(n)
        user, item, timestamp = user[order], item[order], timestamp[order]
    return user, item, timestamp


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_one(impl: str, n: int, time_order: str, id_step: int, source: str = "random", data_dir=None) -> dict:
    if impl.startswith("numba"):
        from hiertcn_kernels import pack_sessions as pack
    else:
        from hiertcn.data.pandas_packer import pack_sessions_pandas as pack
    for small in warmup_logs():
        pack(*small)  # compile / load the Numba cache of every path, import pandas
    rss_before_inputs = _status_kib("VmRSS")
    user, item, timestamp = load_log(source, n, time_order, id_step, data_dir)
    rss_inputs = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    start, cpu_start = time.perf_counter(), time.process_time()
    csr = pack(user, item, timestamp)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _status_kib("VmHWM")
    input_bytes = user.nbytes + item.nbytes + timestamp.nbytes
    return {
        "impl": impl,
        "source": source,
        "n": n,
        "time_order": time_order,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "interactions_per_s": n / seconds,
        "peak_rss_mib": peak / 1024,
        "peak_over_inputs_mib": (peak - rss_inputs) / 1024,
        "peak_per_input_bytes": (peak - rss_before_inputs) * 1024 / input_bytes,
        "sessions": csr.n_sessions,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--time-order", choices=["shuffled", "sorted"], nargs="+", default=["shuffled", "sorted"])
    parser.add_argument("--impl", choices=["pandas", "numba-1thread", "numba"], nargs="+",
                        default=["pandas", "numba-1thread", "numba"], help="numba uses every core")
    parser.add_argument("--source", choices=["xing", "random"], nargs="+", default=["xing", "random"],
                        help="xing: generate_xing log; random: synthetic_log (one event per session, mostly)")
    parser.add_argument("--id-step", type=int, default=7, help="random source: 2**40 makes ids sparse (radix path)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fresh processes per row, implementations alternating round by round; median reported")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.impl[0], args.n, args.time_order[0], args.id_step, args.source[0],
                                 args.data_dir)))
        return
    rows = []
    n_cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        if "xing" in args.source:
            start = time.perf_counter()
            write_xing_arrays(args.n, Path(tmp))
            print(f"generate_xing log of {args.n} interactions written in {time.perf_counter() - start:.1f} s")
        for source in args.source:
            for order in args.time_order:
                runs = {impl: [] for impl in args.impl}
                for _ in range(args.repeats):
                    for impl in args.impl:
                        cmd = [sys.executable, __file__, "--child", "--n", str(args.n), "--impl", impl,
                               "--time-order", order, "--id-step", str(args.id_step), "--source", source,
                               "--data-dir", tmp]
                        env = {**os.environ, "NUMBA_NUM_THREADS": "1"} if impl == "numba-1thread" else None
                        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                        runs[impl].append(json.loads(out))
                for impl, results in runs.items():
                    results.sort(key=lambda r: r["seconds"])
                    row = dict(results[len(results) // 2])  # the median run by wall time
                    row["all_seconds"] = [r["seconds"] for r in results]
                    rows.append(row)
    print(f"{n_cores} cores, load average after: {os.getloadavg()[0]:.1f}")
    print(f"{'source':>6} {'time order':>10} {'impl':>13} {'seconds':>8} {'cpu s':>6} {'Minter/s':>9} {'peak RSS MiB':>13} {'peak/inputs':>12} {'speedup':>8}  [all runs, s]")
    for row in rows:
        base = next(r for r in rows if r["source"] == row["source"] and r["time_order"] == row["time_order"]
                    and r["impl"] == "pandas")
        print(f"{row['source']:>6} {row['time_order']:>10} {row['impl']:>13} {row['seconds']:8.2f} {row['cpu_seconds']:6.2f} "
              f"{row['interactions_per_s'] / 1e6:9.2f} "
              f"{row['peak_rss_mib']:13.0f} {row['peak_per_input_bytes']:12.2f} {base['seconds'] / row['seconds']:8.1f}x"
              f"  [{' '.join(f'{t:.2f}' for t in row['all_seconds'])}]")
    for source in args.source:
        for order in args.time_order:
            if len({r["sessions"] for r in rows if r["source"] == source and r["time_order"] == order}) != 1:
                raise SystemExit(f"implementations disagree on the number of sessions ({source}, {order})")


if __name__ == "__main__":
    main()
