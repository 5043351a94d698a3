"""Where one training step goes, on the batches ``hiertcn bench`` times (the GPU suite's last step).

    PYTHONPATH=. python3 scripts/profile_train_step.py [--repeats N] [--device cuda|cpu]

Prints, for HierTCN against the baselines on the default synthetic log (first training batch of
each, as :func:`hiertcn.bench.bench_models` takes them):
- median step time of every model, interleaved (HierTCN also on the PyTorch reference kernels, and
  HierTCN and GRU4Rec on one whole-user batch of 32 users x 100 events);
- HierTCN's host syncs in one step, by source line (``torch.cuda.set_sync_debug_mode``), on the timed
  batch, on a new host batch moved as in training, and in steps 3-7 of ``fit`` (the training loop);
- kernel launches and GPU-busy time per step of HierTCN and GRU4Rec, and torch.profiler's top ops;
- HierTCN's host (Python) time by function (cProfile).
A step whose launches' CPU cost exceeds its GPU-busy time is launch-bound: fewer, larger ops help;
faster kernels do not.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import dataclasses
import os
import pstats
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hiertcn.batching import user_batches
from hiertcn.bench import _train_step, fixed_history_csr, interleaved_medians, model_step
from hiertcn.cli import load_dataset
from hiertcn.config import Config
from hiertcn.train import LossStep, build_adam, fit, training_loss

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    config = Config(device=device.type)
    dataset, _ = load_dataset(config)
    loss_fn = training_loss(config.loss, dataset)

    def make_step(name, batch=None):
        step, _, batch = model_step(name, dataset, config, loss_fn, device, batch)
        print(f"{name}: {batch.n_tokens} tokens, {batch.n_sessions} windows, {batch.n_lanes} lanes", flush=True)
        return step

    def report(medians):
        print("median step ms: " + ", ".join(f"{k} {1e3 * v:.2f}" for k, v in medians.items()), flush=True)

    steps = {name: make_step(name) for name in ("hiertcn", "gru4rec", "hrnn", "flat_tcn")}
    report(interleaved_medians(steps, repeats=args.repeats, warmup=2, device=device))
    os.environ["HIERTCN_BACKEND"] = "reference"
    report(interleaved_medians({"hiertcn (reference kernels)": steps["hiertcn"]}, repeats=args.repeats, warmup=2,
                               device=device))  # fmt: skip
    del os.environ["HIERTCN_BACKEND"]
    (whole,) = list(user_batches(fixed_history_csr(32, 100, n_items=dataset.csr.n_items), batch_users=32))
    report(interleaved_medians({f"{name} (whole 32x100)": make_step(name, whole) for name in ("hiertcn", "gru4rec")},
                               repeats=args.repeats, warmup=2, device=device))  # fmt: skip

    if cuda:
        # As timed (one batch reused), and as in training: a new host batch moved to the GPU each step.
        _, model, batch = model_step("hiertcn", dataset, config, loss_fn, torch.device("cpu"))
        model.to(device)
        optimizer = build_adam(model.parameters(), lr=config.lr)
        step_loss = LossStep(model, loss_fn)
        state = model.init_state(batch.n_lanes, device)

        def new_batch_step():
            _train_step(step_loss, optimizer, batch.to(device, non_blocking=True), state)

        new_batch_step()
        for label, step in (("one hiertcn step", steps["hiertcn"]), ("one hiertcn step on a new batch", new_batch_step)):
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step()
            torch.cuda.set_sync_debug_mode(0)
            where = collections.Counter(f"{os.path.relpath(w.filename)}:{w.lineno}" for w in caught
                                        if "synchroniz" in str(w.message))  # fmt: skip
            print(f"host syncs in {label}: {sum(where.values())}")
            for line, count in where.most_common(20):
                print(f"  {count:4d}  {line}")
        where = fit_step_syncs(dataset, config)
        print(f"host syncs in fit's steps 3-7 (HierTCN, defaults; the loop as users run it): {sum(where.values())}")
        for line, count in where.most_common(20):
            print(f"  {count:4d}  {line}")

    from torch.profiler import ProfilerActivity, profile

    for name in ("hiertcn", "gru4rec"):
        with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
            for _ in range(5):
                steps[name]()
            if cuda:
                torch.cuda.synchronize()
        table = prof.key_averages()
        launches = sum(e.count for e in table if e.key in LAUNCHES)
        busy_ms = sum(e.self_device_time_total for e in table) / 5 / 1e3
        print(f"\n== {name}: per step {launches / 5:.0f} kernel launches, GPU busy {busy_ms:.2f} ms")
        print(table.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
        if cuda:
            print(table.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))

    # A launch-bound step is as fast as its Python: where HierTCN's host time goes, by function.
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(10):
        steps["hiertcn"]()
    profiler.disable()
    print("\n== hiertcn: host time of 10 steps by function (cProfile; cumulative, then own time)")
    for key in ("cumulative", "tottime"):
        pstats.Stats(profiler).sort_stats(key).print_stats(25)


class _Enough(Exception):
    pass


def fit_step_syncs(dataset, config: Config, first: int = 3, last: int = 7) -> collections.Counter:
    """Host syncs by source line in ``fit``'s steps ``first``..``last`` of HierTCN at the defaults: the
    training loop itself (new batches, the step reports, the progress bar), not only the model's step.
    ``fit`` waits for one step's reports a step late (an event, not a stream sync) where the mode sees it."""
    from hiertcn.models import build_model

    torch.manual_seed(config.seed)
    model = build_model("hiertcn", n_items=dataset.csr.n_items)

    def on_step(step):
        if step == first - 1:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        elif step == last:
            torch.cuda.set_sync_debug_mode(0)
            raise _Enough

    with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryDirectory() as run_dir:
        warnings.simplefilter("always")
        try:
            fit(model, dataset, dataclasses.replace(config, epochs=1, checkpoint_every=0), run_dir=run_dir,
                progress=False, model_name="hiertcn", on_step=on_step)  # fmt: skip
        except _Enough:
            pass
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return collections.Counter(f"{os.path.relpath(w.filename)}:{w.lineno}" for w in caught
                               if "synchroniz" in str(w.message))  # fmt: skip


if __name__ == "__main__":
    main()
