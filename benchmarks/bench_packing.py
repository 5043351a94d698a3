"""Throughput and peak memory of pack_sessions vs the pandas packer, one fresh process per run.

    PYTHONPATH=. python benchmarks/bench_packing.py --n 10000000

Each implementation runs in its own subprocess so peak RSS is its own: the
child builds the synthetic log, warms up (Numba cache / pandas import), resets
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
import time

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


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_one(impl: str, n: int, time_order: str, id_step: int) -> dict:
    if impl.startswith("numba"):
        from hiertcn_kernels import pack_sessions as pack
    else:
        from hiertcn.data.pandas_packer import pack_sessions_pandas as pack
    small = synthetic_log(1000)
    pack(*small)  # compile / load the Numba cache, import pandas
    rss_before_inputs = _status_kib("VmRSS")
    user, item, timestamp = synthetic_log(n, time_order=time_order, id_step=id_step)
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
    parser.add_argument("--id-step", type=int, default=7, help="2**40 makes ids sparse (radix path)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.impl[0], args.n, args.time_order[0], args.id_step)))
        return
    rows = []
    n_cores = os.cpu_count()
    for order in args.time_order:
        for impl in args.impl:
            cmd = [sys.executable, __file__, "--child", "--n", str(args.n), "--impl", impl, "--time-order", order,
                   "--id-step", str(args.id_step)]
            env = {**os.environ, "NUMBA_NUM_THREADS": "1"} if impl == "numba-1thread" else None
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout))
    print(f"{n_cores} cores, load average before: {os.getloadavg()[0]:.1f}")
    print(f"{'time order':>10} {'impl':>13} {'seconds':>8} {'cpu s':>6} {'Minter/s':>9} {'peak RSS MiB':>13} {'peak/inputs':>12} {'speedup':>8}")
    for row in rows:
        base = next(r for r in rows if r["time_order"] == row["time_order"] and r["impl"] == "pandas")
        print(f"{row['time_order']:>10} {row['impl']:>13} {row['seconds']:8.2f} {row['cpu_seconds']:6.2f} "
              f"{row['interactions_per_s'] / 1e6:9.2f} "
              f"{row['peak_rss_mib']:13.0f} {row['peak_per_input_bytes']:12.2f} {base['seconds'] / row['seconds']:8.1f}x")
    if len({r["sessions"] for r in rows if r["time_order"] == rows[0]["time_order"]}) != 1:
        raise SystemExit("implementations disagree on the number of sessions")


if __name__ == "__main__":
    main()
