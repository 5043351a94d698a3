"""The ``hiertcn`` command line: prepare, train, evaluate, compare, recommend, bench, demo.

Every option that is a :class:`~hiertcn.config.Config` key can also come from
``--config FILE`` (TOML or YAML); flags given on the command line win. Commands
that train or evaluate write ``metrics.json`` into ``--out``; ``--json`` prints
the same object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .checkpoint import (
    CheckpointError,
    catalogue_fingerprint,
    data_fingerprint,
    load_checkpoint,
    load_model,
    saved_model_config,
    write_json,
)
from .config import PRECISIONS, SPLITS, TIME_UNITS, Config
from .train import (
    NonFiniteLossError,
    epoch_label,
    fit,
    json_safe,
    resolve_device,
    seed_everything,
    write_metrics,
)

TABLE_METRICS = ("recall@1", "recall@5", "recall@10", "recall@20", "mrr", "mrr@20", "mrp", "first/mrr", "later/mrr")
DATA_KEYS = ("format", "preset", "preset_until_stable", "split", "user_col", "item_col", "time_col", "session_col",
             "column_names", "sep", "time_unit", "session_gap", "cache_dir", "impressions", "skip_bad_rows")  # fmt: skip
DEMO = {  # sized to finish in about 3 minutes on 2 CPU cores
    "full": {"n_users": 1000, "n_items": 500, "epochs": 4, "max_time": 40.0, "lr": 3e-3},
    "tiny": {"n_users": 150, "n_items": 120, "epochs": 1, "max_time": 5.0, "lr": 3e-3},
}


# ---------------------------------------------------------------------------------------------- arguments


def _flag(parser, *names, **kw):
    parser.add_argument(*names, default=argparse.SUPPRESS, **kw)  # absent flags do not override the file


def _common(parser):
    _flag(parser, "--config", help="TOML or YAML file of config keys (flags override it)")
    _flag(parser, "--out", help="output folder of train, compare, evaluate, bench and demo (metrics.json, "
          "checkpoints, plots)")
    parser.add_argument("--json", action="store_true", help="print the result (metrics; prepare: the dataset "
                        "summary; recommend: the recommendations) as JSON on the last line")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _flag(parser, "--seed", type=int, help="seed of every random choice (runs repeat exactly on CPU)")
    _flag(parser, "--device", help="auto | cpu | cuda | cuda:N")
    _flag(parser, "--threads", type=int, help="torch CPU threads (0: torch's choice; the default, except bench and "
          "demo, which use 1)")


def _data_args(parser):
    g = parser.add_argument_group("data")
    _flag(g, "--data", help="interaction log (default: the built-in synthetic XING-format log)")
    _flag(g, "--format", choices=["xing", "csv", "parquet", "movielens", "recbole"], help="detected when omitted")
    _flag(g, "--preset", choices=["hiertcn-xing", "hrnn-xing", "none"])
    _flag(g, "--preset-until-stable", action="store_true", help="repeat the preset's count filters until none "
          "removes anything (the published code, and the default, filter once)")
    _flag(g, "--split", choices=SPLITS, help="default: last-session (each user's last session is the test); user: users "
          "shuffled by --seed, so another seed tests other users")
    for col in ("user", "item", "time"):
        _flag(g, f"--{col}-col", dest=f"{col}_col", help=f"{col} column of a generic CSV/Parquet log")
    _flag(g, "--session-col", dest="session_col", help="session id column of a generic CSV/Parquet log; its sessions "
          "are kept as they are (split only where the user changes); --session-gap, if given, also cuts them at gaps")
    _flag(g, "--column-names", help="a CSV/TSV log without a header line: its columns' names in order, "
          "comma-separated (e.g. user_id,item_id,rating,timestamp)")
    _flag(g, "--sep", help="field separator of a CSV log (one character; 'tab' or '\\t' for a tab)")
    _flag(g, "--time-unit", choices=TIME_UNITS, help="unit of numeric times; default auto: each number by its size "
          "(seconds below 1e11, ms from 1e11, us from 1e14, ns from 1e17), text as ISO 8601")
    _flag(g, "--skip-bad-rows", action="store_true", help="drop (and count) rows that cannot be parsed instead of "
          "stopping at the first ones")
    _flag(g, "--session-gap", type=int, help="seconds of inactivity that start a new session (default 1800, "
          "or none with --session-col; given with --session-col, it also cuts the log's sessions at such gaps)")
    _flag(g, "--cache-dir", help="where prepared datasets are cached")
    _flag(g, "--impressions", help="XING impressions.csv; 'auto' (default): impressions.csv next to a XING "
          "--data file, if present; 'none': ignore impressions")


def _train_args(parser):
    g = parser.add_argument_group("training")
    _flag(g, "--epochs", type=int)
    _flag(g, "--max-time", type=float, help="seconds of training per model (validation excluded); a stop "
          "inside an epoch validates the weights as they are, and --resume trains the rest of that epoch")
    _flag(g, "--lr", type=float)
    _flag(g, "--lr-decay", type=float, help="multiply the learning rate by this after every epoch (default 1: "
          "constant; 0.7 helped HierTCN and HRNN on the synthetic log, see benchmarks/README.md)")
    _flag(g, "--weight-decay", type=float, help="Adam L2 penalty (default 0)")
    _flag(g, "--precision", choices=PRECISIONS, help="fp32 (default) or bf16: the training forward and loss under "
          "bf16 autocast (kernels and products in bf16, weights, optimizer and loss in fp32; for GPUs with bf16, "
          "sm_80+; a CPU without AMX runs it slower than fp32); evaluation always runs in fp32")
    _flag(g, "--loss", help="loss name (default: full softmax cross-entropy)")
    _flag(g, "--patience", type=int, help="early stopping on validation mrr (0 = off)")
    _flag(g, "--n-queues", type=int, help="queues (lanes) of the carried-state batcher (default 32)")
    _flag(g, "--sessions-per-lane", type=int, help="session windows popped per queue per batch (default 10)")
    _flag(g, "--max-session-len", type=int, help="items per session window (default 20); longer sessions split")
    g.add_argument("--truncate", action="store_const", const=True, default=argparse.SUPPRESS,
                   help="drop the items of a session past --max-session-len instead of splitting it")  # fmt: skip
    _flag(g, "--batch-users", type=int, help="users per batch of the models that carry no state")
    _flag(g, "--checkpoint-every", type=int, help="steps between mid-epoch checkpoints (0 = epoch ends only)")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiertcn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="read, preprocess, split and cache an interaction log")
    _common(p), _data_args(p)
    p.set_defaults(handler=cmd_prepare)

    p = sub.add_parser("train", help="train one model (also under torchrun for DDP)")
    _common(p), _data_args(p), _train_args(p)
    _flag(p, "--model", help="model name (default hiertcn)")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run (refused "
                   "otherwise, so that a forgotten --resume does not discard a killed run)")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", help="full-catalogue ranking metrics of a checkpoint")
    _common(p), _data_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--role", choices=["test", "valid"], default="test", help="which held-out sessions to score")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("compare", help="train and evaluate several models on one dataset; print a table")
    _common(p), _data_args(p), _train_args(p)
    _flag(p, "--models", help="comma-separated model names (default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace the runs already in --out/<model>")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("recommend", help="top-K next items for users from a checkpoint")
    _common(p), _data_args(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--users", help="comma-separated raw user ids, or 'all' (default: the first 5 users; with "
                   "--output, all)")
    p.add_argument("--output", metavar="FILE", help="write the recommendations to a .csv or .parquet file (user, "
                   "rank, item, score) or .jsonl (a line per user) instead of printing them")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--at", type=_request_time, metavar="TIME",
                   help="time of the request: unix seconds, ISO 8601 (UTC unless it has an offset) or 'now'; "
                        "a session gap or more after a user's last interaction starts a new session "
                        "(default: continue the last session)")
    p.add_argument("--exclude-seen", action="store_true",
                   help="leave out the items a user has already interacted with (default: keep them; repeats "
                        "are common in XING-like logs)")
    p.set_defaults(handler=cmd_recommend)

    p = sub.add_parser("bench", help="kernel ops, HierTCN vs GRU4Rec speed, memory vs FlatTCN; or --scaling")
    _common(p), _data_args(p), _train_args(p)
    _flag(p, "--models", help="comma-separated model names to time (default hiertcn; gru4rec always runs)")
    p.add_argument("--steps", type=int, default=5, help="timed repeats of every op and step (median; after a warm-up)")
    p.add_argument("--tokens", type=_int_list, default=[1024, 4096, 16384],
                   help="comma-separated packed interactions of the kernel-op timings (default 1024,4096,16384)")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="kernel-op dtype")
    p.add_argument("--history-lengths", type=_int_list, default=[50, 100, 200, 500],
                   help="events per user of the HierTCN vs FlatTCN memory comparison")
    p.add_argument("--scaling", action="store_true",
                   help="instead: HierTCN vs GRU4Rec (default-size models, full softmax) on synthetic XING logs "
                        "of --sizes interactions; --data, --loss and model_config do not apply")
    p.add_argument("--sizes", type=_int_list, default=[10_000, 100_000, 1_000_000, 10_000_000],
                   help="interactions per log of --scaling (default 10k,100k,1M,10M)")
    p.add_argument("--budget", type=float, default=60.0,
                   help="--scaling: seconds of training per (size, model); longer epochs are projected")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("demo", help="synthetic XING log -> HierTCN vs baselines -> table and plots")
    _common(p)
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke-test version")
    _flag(p, "--models", help="comma-separated model names (default: all)")
    _flag(p, "--epochs", type=int)
    _flag(p, "--max-time", type=float, help="seconds of training per model")
    p.set_defaults(handler=cmd_demo)
    return parser


def config_from_args(args, **defaults) -> Config:
    """``defaults`` (command-specific), then ``--config``, then the flags given."""
    config_keys = set(Config.keys())
    given = {k: v for k, v in vars(args).items() if k in config_keys}
    config = Config.from_dict(defaults, source=f"{args.command} defaults")
    if getattr(args, "config", None):
        from .config import read_config_file

        config = config.updated(read_config_file(args.config), source=args.config)
    config = _absolute_paths(config.updated(given, source="command-line flags"))
    resolve_device(config.device)  # a device this machine lacks fails now, not after preparing the data
    if args.command in ("train", "compare", "bench"):  # (evaluate and recommend build from the checkpoint)
        _check_names(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    return config


def _check_names(config: Config) -> None:
    """A misspelt model or loss fails now, before a log is prepared, not when it is built. (Here, not in
    Config: a library user's ``fit`` with a model and loss of their own may label them anything.)"""
    from .losses import LOSS_NAMES
    from .models import MODEL_NAMES

    if config.model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {', '.join(MODEL_NAMES)}, got {config.model!r}")
    if config.loss not in LOSS_NAMES:
        raise ValueError(f"loss must be one of {', '.join(LOSS_NAMES)}, got {config.loss!r}")


def _absolute_paths(config: Config) -> Config:
    """Data paths made absolute, so a checkpoint's config finds its data from any working directory."""
    for key in ("data", "cache_dir", "impressions"):
        value = getattr(config, key)
        if value is not None and not (key == "impressions" and value in ("auto", "none")):
            setattr(config, key, str(Path(value).expanduser().resolve()))
    return config


def check_fresh_run(run_dir, overwrite: bool, resume_hint: bool = True) -> None:
    """A new run must not replace one already in ``run_dir`` unless asked (``--overwrite``)."""
    last = Path(run_dir) / "last.pt"
    if last.exists() and not overwrite:
        resume = "--resume continues it, " if resume_hint else ""
        raise ValueError(f"{run_dir} already holds a run ({last.name}): {resume}--overwrite replaces it, or "
                         "choose another --out")  # fmt: skip


def writable_out(out) -> Path:
    """``out`` created if needed; a ValueError now, before any training, when it cannot be written."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"out {out}: cannot create the folder ({err.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"out {out}: the folder is not writable")
    return out


# ---------------------------------------------------------------------------------------------- helpers


def load_dataset(config: Config, *, echo=print):
    from .data.prepare import prepare_dataset
    from .data.readers import shown_lines

    options = {k: getattr(config, k) for k in DATA_KEYS if getattr(config, k) is not None}
    start = time.perf_counter()
    dataset, cache_path = prepare_dataset(config.data, seed=config.seed, **options)
    csr = dataset.csr
    shown = "" if dataset.impressions is None else f", {len(dataset.imp_item)} impressions"
    source = "the built-in synthetic XING log (--data for yours)" if config.data is None else "dataset"
    echo(
        f"{source}: {csr.n_users} users, {csr.n_sessions} sessions, {csr.n_interactions} interactions, "
        f"{csr.n_items} items{shown} (cache {cache_path}, {time.perf_counter() - start:.1f}s)"
    )
    skipped = dataset.info.get("skipped_rows", 0)
    if skipped:
        head = dataset.info.get("skipped_lines_head", [])
        lines = f"; lines {shown_lines(head, skipped)}" if head else ""
        echo(f"skipped {skipped} bad row(s) of the log (--skip-bad-rows){lines}")
    return dataset, cache_path


def build_for(name: str, dataset, config: Config):
    from .models import build_model

    options = dict(config.model_config.get(name, {}))
    try:
        return build_model(name, n_items=dataset.csr.n_items, **options), options
    except (TypeError, ValueError) as err:  # an unknown key or a bad value in model_config.<name>
        raise ValueError(f"model_config.{name}: {err}") from err


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    cols = [c for c in (*TABLE_METRICS, "interactions_per_s", "train_time_s", "wait_fraction")
            if any(c in m for m in metrics.values())]  # fmt: skip
    head = {"interactions_per_s": "inter/s", "train_time_s": "train s", "wait_fraction": "wait",
            "first/mrr": "mrr first", "later/mrr": "mrr later"}  # fmt: skip
    width = max([len("model"), *map(len, metrics)])
    lines = [f"{'model':<{width}}  " + "  ".join(f"{head.get(c, c):>9}" for c in cols)]
    for name, row in metrics.items():
        cells = []
        for c in cols:
            v = row.get(c, float("nan"))
            cells.append(f"{v:>9.0f}" if c == "interactions_per_s" else f"{v:>9.1f}" if c == "train_time_s"
                         else f"{v:>9.1%}" if c == "wait_fraction" else f"{v:>9.4f}")  # fmt: skip
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def _finish(args, obj) -> int:
    if args.json:
        print(json.dumps(json_safe(obj), allow_nan=False))
    return 0


def _say(args):
    """``print`` for human-readable lines; under ``--json`` they go to stderr so stdout ends in JSON."""
    stream = sys.stderr if args.json else sys.stdout
    return lambda *a: print(*a, file=stream, flush=True)


def _model_names(config: Config) -> list[str]:
    from .models import MODEL_NAMES

    if config.models is not None and not config.models:  # [] or "": a blank --models must not mean all of them
        raise ValueError(f"--models names no model; list some of {', '.join(MODEL_NAMES)}, or leave it out for all")
    names = config.models or list(MODEL_NAMES)
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"--models: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODEL_NAMES)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # each model trains into --out/<name>: a second run would overwrite the first
        raise ValueError(f"--models: {', '.join(twice)} listed more than once")
    return names


def _init_distributed(config: Config) -> bool:
    """Join the process group ``torchrun`` describes; NCCL with one GPU per rank, else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed as dist

    device = resolve_device(config.device)
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        config.device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


# ---------------------------------------------------------------------------------------------- commands


def cmd_prepare(args) -> int:
    config = config_from_args(args)
    dataset, cache_path = load_dataset(config, echo=_say(args))
    role = np.asarray(dataset.role)
    summary = {"cache": str(cache_path), "users": dataset.csr.n_users, "sessions": dataset.csr.n_sessions,
               "interactions": dataset.csr.n_interactions, "items": dataset.csr.n_items,
               "train_sessions": int((role == 0).sum()), "valid_sessions": int((role == 1).sum()),
               "test_sessions": int((role == 2).sum())}  # fmt: skip
    if dataset.impressions is not None:
        summary["impressions"] = len(dataset.imp_item)
    for key in ("skipped_rows", "dropped_sessions", "dropped_interactions", "preset_report"):
        if key in dataset.info:
            summary[key] = dataset.info[key]
    if "preset_report" in summary:
        from .data.presets import PresetReport

        _say(args)(str(PresetReport.from_dict(summary["preset_report"])))
    if summary.get("dropped_interactions"):  # also when no whole session went
        _say(args)(
            f"split {dataset.info['split']}: removed {summary['dropped_interactions']} held-out interactions: items "
            f"unseen in training, and {summary['dropped_sessions']} held-out sessions left with fewer than "
            f"{dataset.info['min_test_len']} interactions"
        )
    summary["session_gap"] = dataset.info.get("session_gap")
    rule = "the log's sessions, no session gap" if summary["session_gap"] is None else \
        f"session gap {summary['session_gap']} s"  # fmt: skip
    _say(args)(
        f"sessions: {summary['train_sessions']} train, {summary['valid_sessions']} valid, "
        f"{summary['test_sessions']} test (split {dataset.info.get('split')}, {rule}); prepared in {cache_path}"
    )
    for role in ("train", "test"):
        if not summary[f"{role}_sessions"]:
            print(f"hiertcn prepare: warning: no {role} sessions, so train will refuse this split "
                  f"({dataset.info.get('split')}); try another --split or check --session-gap", file=sys.stderr)
    return _finish(args, summary)


def cmd_train(args) -> int:
    config = config_from_args(args, out="runs/train")
    if args.resume:
        config = _resumed_config(args, Path(config.out) / "last.pt")
    else:
        check_fresh_run(config.out, args.overwrite)
    writable_out(config.out)
    say = _say(args)
    ddp = _init_distributed(config)
    try:
        rank = torch.distributed.get_rank() if ddp else 0
        if rank != 0:  # rank 0 prepares (and caches) the dataset alone; the others then read the cache
            torch.distributed.barrier()
        dataset, _ = load_dataset(config, echo=say if rank == 0 else lambda *a: None)
        if ddp and rank == 0:
            torch.distributed.barrier()
        seed_everything(config.seed)
        model, options = build_for(config.model, dataset, config)
        result = fit(model, dataset, config, run_dir=config.out, resume=args.resume, progress=not args.quiet,
                     model_name=config.model, model_config=options)  # fmt: skip
    finally:
        if ddp:
            torch.distributed.destroy_process_group()
    if rank != 0:
        return 0
    say(format_table({config.model: result.metrics}))
    say(_tested_weights(result))
    if result.stopped == "max_time":
        say(f"stopped at max_time ({config.max_time:g} s of training, {result.metrics['epochs']} epoch(s) done); "
            "--resume with a larger --max-time to go on")
    elif result.stopped == "patience":
        say(f"stopped early: no better validation mrr for {config.patience} epoch(s)")
    say(f"checkpoints and metrics.json in {config.out}")
    return _finish(args, result.metrics)


# What a resumed run may change: when and where it stops, checkpoints and runs. Everything else shaped
# the saved weights, optimiser and batches, so a new value means a new run.
RESUME_MAY_CHANGE = ("epochs", "max_time", "patience", "checkpoint_every", "device", "threads", "prefetch",
                     "cache_dir", "out")  # fmt: skip


def _resumed_config(args, last: Path) -> Config:
    """The run's own settings from ``last``, with the flags that may change on a resume applied."""
    if not last.is_file():
        raise ValueError(f"--resume: there is no {last} to continue (run without --resume to start the run)")
    keys = Config.keys()
    checkpoint = load_checkpoint(last)
    saved = {k: v for k, v in checkpoint["config"].items() if k in keys}
    if checkpoint.get("model_name"):  # the model as it was built, defaults that changed since included
        saved["model_config"] = {**saved.get("model_config", {}), checkpoint["model_name"]: saved_model_config(checkpoint)}
    config = config_from_args(args, **{**saved, "out": str(last.parent)})
    before = _absolute_paths(Config.from_dict(saved, source=str(last)))
    changed = [f"{key} {getattr(config, key)!r} (the run's: {getattr(before, key)!r})" for key in keys
               if key not in RESUME_MAY_CHANGE and getattr(config, key) != getattr(before, key)]  # fmt: skip
    if changed:
        raise ValueError(
            f"--resume continues {last.parent} with its own settings, but this asks for {'; '.join(changed)}. "
            f"Start a new run (another --out) to change them; a resume may change only "
            f"{', '.join(RESUME_MAY_CHANGE)}"
        )
    return config


def _tested_weights(result) -> str:
    """Which weights the test metrics are of: the best validation epoch's (best.pt), or the last ones."""
    scored = [row for row in result.history if "val_mrr" in row]
    if not scored:
        return "test metrics of the last weights (no validation to pick the best epoch by)"
    best = max(scored, key=lambda row: row["val_mrr"])  # the first of equals, as training keeps it
    return f"test metrics of epoch {epoch_label(best['epoch'])}'s weights (best validation mrr {best['val_mrr']:.4f}; best.pt)"


def _scoring_defaults(saved) -> dict:
    """A checkpoint's run settings as evaluate/recommend defaults, but the device ``auto``: a run trained on a
    GPU can be scored on a machine without one (``--device`` still picks)."""
    return {**saved.get("config", {}), "device": "auto"}


def cmd_evaluate(args) -> int:
    from .data.splits import TEST, VALID
    from .evaluate import evaluate

    saved = load_checkpoint(args.checkpoint)
    out = str(Path(args.checkpoint).parent / "evaluate")
    config = config_from_args(args, **{**_scoring_defaults(saved), "out": out})
    model, _ = load_model(args.checkpoint, map_location=resolve_device(config.device))
    dataset, _ = load_dataset(config, echo=_say(args))
    _check_catalogue(dataset, saved, args.checkpoint)
    if saved.get("data", data_fingerprint(dataset)) != data_fingerprint(dataset):  # older checkpoints: no record
        _say(args)(f"note: the log as prepared now differs from the one {args.checkpoint} was trained on (other "
                   "interactions, times or split: it changed since, or other options): its held-out sessions "
                   "may have been in training, and the metrics differ from the run's")  # fmt: skip
    metrics = evaluate(model, dataset, roles=(TEST,) if args.role == "test" else (VALID,),
                       max_session_len=config.max_session_len)
    write_metrics(config.out, metrics)
    _say(args)(format_table({saved["model_name"]: metrics}))
    return _finish(args, metrics)


def cmd_compare(args) -> int:
    config = config_from_args(args, out="runs/compare")
    for name in _model_names(config):  # bad names fail before the data is prepared
        check_fresh_run(Path(config.out) / name, args.overwrite, resume_hint=False)
    writable_out(config.out)
    say = _say(args)
    dataset, _ = load_dataset(config, echo=say)
    results = run_comparison(dataset, config, progress=not args.quiet, echo=say)
    metrics = {name: r.metrics for name, r in results.items()}
    say(format_table(metrics))
    write_metrics(config.out, metrics)
    paths = write_plots(results, config.out)
    say(f"metrics.json, plots ({', '.join(p.name for p in paths)}) and checkpoints in {config.out}")
    return _finish(args, metrics)


def run_comparison(dataset, config: Config, *, progress=True, echo=print):
    """Train and test every model of ``config.models``; ``{name: TrainResult}`` in that order.

    Every model is built once first, so a bad option of the last one fails before the first trains
    (on the meta device: no memory, no random draws)."""
    names = _model_names(config)
    with torch.device("meta"):
        for name in names:
            build_for(name, dataset, config)
    results = {}
    for name in names:
        seed_everything(config.seed)
        model, options = build_for(name, dataset, config)
        echo(f"training {name} ({sum(p.numel() for p in model.parameters())} parameters)")
        result = fit(model, dataset, config, run_dir=Path(config.out) / name, progress=progress,
                     model_name=name, model_config=options)  # fmt: skip
        results[name] = result
        echo(f"  {name}: mrr {result.metrics['mrr']:.4f}, recall@10 {result.metrics['recall@10']:.4f}, "
             f"{result.metrics['interactions_per_s']:.0f} interactions/s, "
             f"{result.metrics['wait_fraction']:.1%} of step time waiting for data")  # fmt: skip
    return results


def write_plots(results, out) -> list[Path]:
    from .plots import plot_metric_bars, plot_training_curves

    histories = {name: r.history for name, r in results.items()}
    curves = {name: r.curve for name, r in results.items()}
    metrics = {name: r.metrics for name, r in results.items()}
    return [plot_training_curves(histories, curves, Path(out) / "training_curves.png"),
            plot_metric_bars(metrics, Path(out) / "metrics.png")]  # fmt: skip


def cmd_recommend(args) -> int:
    from .data.prepare import resolve_session_gap
    from .recommend import RequestTimeError, recommend, recommendations_path, write_recommendations

    if args.output:
        recommendations_path(args.output)  # a bad name fails before anything is loaded

    saved = load_checkpoint(args.checkpoint)
    config = config_from_args(args, **_scoring_defaults(saved))
    model, _ = load_model(args.checkpoint, map_location=resolve_device(config.device))
    dataset, _ = load_dataset(config, echo=_say(args))
    _check_catalogue(dataset, saved, args.checkpoint)
    csr = dataset.csr
    # String-id logs are stored as codes into info["user_names"] / info["item_names"]; talk in the raw ids.
    user_names, item_names = dataset.info.get("user_names"), dataset.info.get("item_names")
    user_keys = _raw_ids(csr.user_ids, user_names)
    listed = args.users is not None and args.users != "all"
    if listed:
        row_of = {key: row for row, key in enumerate(user_keys)}
        wanted = [u.strip() if user_names is not None else _int_id(u) for u in args.users.split(",")]
        unknown = [str(u) for u in wanted if u not in row_of]
        if unknown:
            preset = dataset.info.get("preset")
            removed = f", or removed by --preset {preset} (`hiertcn prepare` reports what it keeps)" \
                if preset not in (None, "none") else ""  # fmt: skip
            raise ValueError(
                f"--users: unknown user id(s) {', '.join(unknown)}: not in the prepared log (not in --data{removed}); "
                "only its users have a history to recommend after"
            )
        rows = np.array([row_of[u] for u in wanted], dtype=np.int64)
    else:
        rows = np.arange(csr.n_users)
    user_ptr, session_ptr = np.asarray(csr.user_ptr), np.asarray(csr.session_ptr)
    has_history = session_ptr[user_ptr[rows + 1]] > session_ptr[user_ptr[rows]]
    if listed and not has_history.all():
        empty = ", ".join(str(user_keys[r]) for r in rows[~has_history])
        raise ValueError(f"--users: no interactions to recommend after for user id(s) {empty} (all were filtered out)")
    if not listed:
        every = args.users == "all" or args.output
        rows = rows[has_history] if every else rows[has_history][:5]
    # The log's own session rule (a RecBole session_id column has no gap either); older datasets: the config's
    info_gap = dataset.info.get("session_gap", "unrecorded")
    gap = resolve_session_gap(config.session_gap, config.session_col) if info_gap == "unrecorded" else info_gap
    try:
        items, scores = recommend(model, csr, rows, args.k, max_session_len=config.max_session_len,
                                  impressions=getattr(dataset, "impressions", None), at=args.at,
                                  session_gap=math.inf if gap is None else gap, exclude_seen=args.exclude_seen,
                                  progress=bool(args.output) and not args.quiet)
    except RequestTimeError as late:  # named here by raw id and UTC time (recommend knows rows and seconds)
        raise ValueError(f"--at {_utc(late.at)} is before the last interaction of {len(late.user_rows)} user(s) "
                         f"(user {user_keys[late.user_rows[0]]}: {_utc(late.last[0])}); recommend after a user's "
                         "history") from None  # fmt: skip
    if args.at is not None and not model.carries_state:
        _say(args)(f"note: {saved['model_name']} reads each history as one sequence, without sessions, so --at "
                   "does not change its recommendations")  # fmt: skip
    elif args.at is not None and gap is None:
        _say(args)("note: the log's sessions (--session-col) are not cut at a --session-gap, so --at continues each "
                   "user's last session")  # fmt: skip
    # Seen items fill a list only when fewer than k are unseen (at -inf): they are not recommendations.
    keep = scores > -np.inf if args.exclude_seen else np.ones(scores.shape, dtype=bool)
    short = int((~keep.all(axis=1)).sum())
    if short:
        _say(args)(f"note: {short} user(s) have fewer than {args.k} unseen items; their lists are shorter")
    if args.output:
        raw_items = items if item_names is None else np.asarray(item_names, dtype=object)[items]
        path = write_recommendations(args.output, [user_keys[r] for r in rows], raw_items, scores, keep)
        _say(args)(f"top {args.k} items for {len(rows)} users in {path}")
        return _finish(args, {"output": str(path), "users": len(rows), "k": args.k})
    result = {str(user_keys[r]): _raw_ids(items[i][keep[i]], item_names) for i, r in enumerate(rows)}
    for user, recs in result.items():
        _say(args)(f"user {user}: {' '.join(map(str, recs))}")
    return _finish(args, result)


def _utc(seconds) -> str:
    """Unix seconds (the readers' time unit) as an ISO 8601 UTC time."""
    return datetime.datetime.fromtimestamp(int(seconds), datetime.UTC).isoformat().replace("+00:00", "Z")


def _raw_ids(codes, names) -> list:
    """The raw ids of ``codes``: ints, or the strings they index in ``names`` for a string-id log."""
    codes = np.asarray(codes).tolist()
    return codes if names is None else [names[c] for c in codes]


def _version() -> str:
    """hiertcn's version and what it runs on (what a bug report needs)."""
    from . import __version__

    cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "no GPU"
    try:
        import triton

        kernels = f"triton {triton.__version__}"
    except ImportError:
        kernels = "no triton (reference kernels only)"
    return f"hiertcn {__version__} (torch {torch.__version__}, {kernels}, {cuda})"


def _request_time(text: str) -> int:
    """``--at``: unix seconds, ISO 8601 text as the readers parse it, or ``now``."""
    from .data.readers import time_seconds

    try:
        return int(time.time()) if text == "now" else time_seconds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, or 'now'") from None


def _int_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--users: this log has integer user ids, got {text!r}") from None


def _explicit_command(args) -> str:
    """The command line that repeats this run, every option spelled out (defaults included)."""
    words = ["hiertcn", args.command]
    for key, value in vars(args).items():
        if key in ("command", "handler") or value is None or value is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if value is not True:
            words.append(",".join(map(str, value)) if isinstance(value, list) else str(value))
    return shlex.join(words)


def cmd_bench(args) -> int:
    from . import bench
    from .plots import plot_memory_vs_history, plot_scaling, plot_time_vs_tokens

    # One torch thread unless --threads: on a shared CPU, OpenMP threads waiting on each other swamp the timings.
    config = config_from_args(args, out="runs/bench", threads=1)
    say, out = _say(args), writable_out(config.out)
    run = {"command": _explicit_command(args), "commit": bench.git_commit(Path(__file__).parent)}
    models = _model_names(config) if config.models is not None else ["hiertcn", "gru4rec"] if args.scaling \
        else ["hiertcn"]  # fmt: skip
    if args.scaling:
        if config.data is not None or config.loss != "softmax" or config.model_config:
            say("note: --scaling trains the default models with full softmax on its own synthetic logs; "
                "data, loss and model_config are not used")
        rows = bench.scaling_study(args.sizes, models, budget_s=args.budget,
                                   device=config.device, threads=config.threads, seed=config.seed,
                                   progress=not args.quiet)  # fmt: skip
        say(bench.format_scaling_table(rows))
        result = {**run, "device": bench.device_info(resolve_device(config.device)), "scaling": rows,
                  "speedup_vs_gru4rec": {str(k): v for k, v in bench.speedups(rows).items()}}  # fmt: skip
        plot_scaling(rows, out / "scaling.png")
        write_json(out / "scaling.json", result, indent=2)
        say(f"scaling.json and scaling.png in {out}")
        return _finish(args, result)
    dataset, _ = load_dataset(config, echo=say)
    result = {**run, **bench.run_bench(
        dataset, config, models=models, tokens=args.tokens, channels=args.channels,
        history_lengths=args.history_lengths, repeats=args.steps, dtype=args.dtype, progress=not args.quiet,
    )}  # fmt: skip
    say(bench.format_table(result))
    write_json(out / "bench.json", result, indent=2)
    plot_time_vs_tokens(result["kernels"], out / "time_vs_tokens.png")
    plot_memory_vs_history(result["memory_vs_history"], out / "memory_vs_history.png")
    say(f"bench.json, time_vs_tokens.png and memory_vs_history.png in {out}")
    return _finish(args, result)


def cmd_demo(args) -> int:
    from .data.synthetic import generate_xing

    size = DEMO["tiny" if args.tiny else "full"]
    out = Path(config_from_args(args, out="hiertcn-demo").out)  # --out, else the --config file's, else this
    config = config_from_args(
        args, out=str(out), epochs=size["epochs"], max_time=size["max_time"], lr=size["lr"],
        cache_dir=str(out / "cache"), format="xing", checkpoint_every=0, validate=False,
        threads=1,  # torch's OpenMP threads + the loader thread thrash a busy 2-core machine (40x slower seen)
    )  # fmt: skip
    say = _say(args)
    writable_out(out)
    _model_names(config)
    if config.data is not None:
        say(f"note: demo trains on its own synthetic log, not data = {config.data}; use compare for your log")
    start = time.perf_counter()
    files = generate_xing(out / "data", n_users=size["n_users"], n_items=size["n_items"], seed=config.seed)
    say(f"synthetic XING log: {files.interactions}")
    config.data = str(files.interactions)
    dataset, cache_path = load_dataset(config, echo=say)
    results = run_comparison(dataset, config, progress=not args.quiet, echo=say)
    metrics = {name: r.metrics for name, r in results.items()}
    write_metrics(out, metrics)
    plots = write_plots(results, out)
    say("")
    say(format_table(metrics))
    say("")
    say(f"log:         {files.interactions}")
    say(f"dataset:     {cache_path}")
    say(f"metrics:     {out / 'metrics.json'}")
    say(f"plots:       {', '.join(map(str, plots))}")
    say(f"checkpoints: {out}/<model>/best.pt")
    say(f"done in {time.perf_counter() - start:.0f}s")
    return _finish(args, metrics)


def _check_catalogue(dataset, saved, path) -> None:
    if dataset.csr.n_items != saved["n_items"]:
        raise ValueError(
            f"checkpoint {path} was trained on {saved['n_items']} items but the log as prepared now has "
            f"{dataset.csr.n_items}: pass the --data/--preset/--split it was trained with, or, if that log has "
            "changed since (new items), train again on it"
        )
    fingerprint = catalogue_fingerprint(dataset)
    if saved.get("catalogue", fingerprint) != fingerprint:
        raise ValueError(
            f"checkpoint {path} was trained on another catalogue of {saved['n_items']} items (other item ids); "
            "pass the --data/--preset/--split it was trained with"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def show_warning(message, category, *_, **__):  # a user-facing line, not Python's file:line source dump
        kind = "" if category is UserWarning else f" ({category.__name__})"
        print(f"hiertcn {args.command}: warning{kind}: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():  # restores Python's own display when main returns
            warnings.showwarning = show_warning
            return args.handler(args)
    except (ValueError, OSError, CheckpointError, NonFiniteLossError) as err:  # OSError: a disk or permission
        print(f"hiertcn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; run it again with --resume to continue from the last checkpoint" if args.command == "train" else ""
        print(f"hiertcn {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
