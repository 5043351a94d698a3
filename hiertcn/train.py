"""Training: Adam + clipping over lane batches, carried state, validation, checkpoints, DDP.

Models that carry state (``model.carries_state``) train on :class:`QueueBatcher`
lanes: the state leaves one batch detached (gradients are truncated at batch
boundaries) and enters the next, and the model resets it where ``new_user`` says.
The others train on whole-user batches. Batches are built on a loader thread;
the fraction of step time spent waiting for it is reported as ``wait_fraction``.

Every ``checkpoint_every`` steps and at every epoch end, ``last.pt`` in the run
folder records everything needed to continue bit-for-bit (model, optimizer, LR
schedule, batcher position, carried state, RNG); ``best.pt`` holds the weights
with the best validation ``mrr``. Under ``torchrun`` each rank trains on its own
shard of users inside ``DistributedDataParallel`` and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import functools
import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ._ragged import offsets
from .batching import QueueBatcher, user_batches
from .checkpoint import (
    catalogue_fingerprint,
    check_same_data,
    data_fingerprint,
    load_checkpoint,
    save_checkpoint,
    write_json,
)
from .config import Config
from .data.splits import TEST, TRAIN, VALID
from .losses import ids_checked_on_host
from .metrics import combine_results
from .models.base import check_catalogue


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""


@dataclass
class TrainResult:
    metrics: dict[str, float]  # test metrics of the best-validation weights, plus throughput
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss) of every step
    run_dir: Path | None = None
    stopped: str = "epochs"  # why training ended: "epochs", "patience" (early stopping) or "max_time"


class Prefetcher:
    """Iterates ``iterable`` on a daemon thread, ``depth`` items ahead; ``wait_s`` is time spent blocked."""

    _END = object()

    def __init__(self, iterable, depth: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.wait_s = 0.0
        self._thread = threading.Thread(target=self._fill, args=(iterable,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, iterable):
        try:
            for item in iterable:
                if not self._put(item):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(_LoaderError(err))
            return
        self._put(self._END)

    def __iter__(self):
        while True:
            start = time.perf_counter()
            item = self._queue.get()
            self.wait_s += time.perf_counter() - start
            if item is self._END:
                return
            if isinstance(item, _LoaderError):
                raise item.error
            yield item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class _LoaderError:
    error: BaseException


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; a ValueError for one this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this machine (this torch build) has no CUDA device; use cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def distributed() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class WholeUserBatches:
    """Epochs of :func:`~hiertcn.batching.user_batches` (one user's whole TRAIN history per lane),
    users shuffled per epoch by ``(seed, epoch)``; the same interface as :class:`QueueBatcher`."""

    def __init__(
        self, csr, *, include: np.ndarray, batch_users: int, max_session_len: int, users=None, seed=0,
        impressions=None,
    ):
        self.csr, self.include, self.seed, self.impressions = csr, include, seed, impressions
        self.batch_users, self.max_session_len = batch_users, max_session_len
        users = np.arange(csr.n_users) if users is None else np.asarray(users, dtype=np.int64)
        included = offsets(np.asarray(include, dtype=np.int64))  # included sessions before each session
        per_user = included[csr.user_ptr[1:]] - included[csr.user_ptr[:-1]]
        self.users = users[per_user[users] > 0]

    def n_batches(self, epoch: int) -> int:
        return -(-len(self.users) // self.batch_users)

    def batches(self, epoch: int, start: int = 0):
        order = np.random.default_rng((self.seed, epoch)).permutation(self.users)
        return user_batches(
            self.csr,
            order[start * self.batch_users :],
            max_session_len=self.max_session_len,
            score_sessions=self.include,
            batch_users=self.batch_users,
            impressions=self.impressions,
        )


def batch_source(model, dataset, config: Config, *, users: np.ndarray | None = None, loss_fn=None,
                 carry_over: bool = True):  # fmt: skip
    """The training batches for ``model``: carried-state lanes, or whole users for stateless models.

    They carry the dataset's impressions when the model or ``loss_fn`` reads them. ``carry_over``: the
    lanes' stream runs on across epochs (:class:`QueueBatcher`); False drains each epoch (every window once).
    """
    train_sessions = np.asarray(dataset.role) == TRAIN
    impressions = None
    if getattr(model, "has_impression", False) or getattr(loss_fn, "takes_impressions", False):
        impressions = getattr(dataset, "impressions", None)
    if getattr(model, "carries_state", False):
        return QueueBatcher(
            dataset.csr,
            n_queues=config.n_queues,
            sessions_per_lane=config.sessions_per_lane,
            max_session_len=config.max_session_len,
            truncate=config.truncate,
            include=train_sessions,
            users=users,
            seed=config.seed,
            impressions=impressions,
            carry_over=carry_over,
        )
    return WholeUserBatches(
        dataset.csr,
        include=train_sessions,
        batch_users=config.batch_users,
        max_session_len=config.max_session_len,
        users=users,
        seed=config.seed,
        impressions=impressions,
    )


def train_item_counts(dataset) -> np.ndarray:
    """``(n_items,)`` int64: how often each item occurs in the TRAIN sessions (the training targets)."""
    csr = dataset.csr
    train = np.asarray(dataset.role)[np.repeat(np.arange(csr.n_sessions), np.diff(csr.session_ptr))] == TRAIN
    return np.bincount(np.asarray(csr.item)[train], minlength=csr.n_items)


def training_loss(name: str, dataset):
    """``build_loss(name)``; a loss that samples negatives draws them by the TRAIN item popularity."""
    from .losses import LOSSES, build_loss

    if name in LOSSES and LOSSES[name].samples_items:
        return build_loss(name, item_counts=train_item_counts(dataset))
    return build_loss(name)


class LossStep(torch.nn.Module):
    """Forward and loss as one module, so DDP sees the loss (not the carried state) as its output.

    Returns ``(loss, state)`` with the state detached: gradients stop at batch boundaries.
    A loss that draws negatives from impressions (``loss_fn.takes_impressions``) gets
    ``loss_fn.num_negatives`` of each target's impressed items when the batch has them, drawn
    afresh each step from a longer list (BPR's one negative is not always the week's first item).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch, state):
        user_emb, state = self.model(batch, state)
        mask = batch.target_mask
        extra = {}
        if batch.has_impressions and getattr(self.loss_fn, "takes_impressions", False):
            extra["impressions"] = batch.impression_matrix(self.loss_fn.num_negatives, mask, sample=True)
        # Built with the batch on the host; else one host read for both, where boolean indexing takes one each.
        targets = batch.target_index if batch.target_index is not None else mask.nonzero().squeeze(1)
        # Item ids the batch's host bounds put in the catalogue need no device read in the loss.
        bounds, table = batch.item_bounds, getattr(self.model, "output_embeddings", None)
        checked = bounds is not None and table is not None and 0 <= bounds[0] and bounds[1] < table()[0].shape[0]
        with ids_checked_on_host() if checked else contextlib.nullcontext():
            loss = self.loss_fn(self.model, user_emb.index_select(0, targets), batch.items.index_select(0, targets),
                                batch=batch, **extra)  # fmt: skip
        return loss, self.model.detach_state(state) if state is not None else None


def build_adam(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam; with every parameter on CUDA its fused kernel (a few launches for all parameters, not a
    chain of foreach ops: these models' steps are launch-bound on a GPU), elsewhere torch's default."""
    params = list(params)
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True if fused else None)


def load_adam_state(optimizer: torch.optim.Adam, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` keeping ``optimizer``'s fused choice: loading takes every group
    option from ``state``, so a run saved unfused (or on CPU) would resume unfused on CUDA."""
    fused = optimizer.defaults.get("fused")
    state = {**state, "param_groups": [{**group, "fused": fused} for group in state["param_groups"]]}
    optimizer.load_state_dict(state)


# Why a split can leave TRAIN or TEST empty, and what to try instead, by split (``--split`` names).
_EMPTY_SPLIT_HINTS = {
    "last-session": "the last-session split holds out the last sessions of users with 3+ sessions, if 2+ of "
                    "their items were trained on (check --session-gap and the timestamps), or use --split user "
                    "or --split time",
    "user": "the user split deals whole users out to train, valid and test, so it needs several users (and "
            "users with 2+ interactions); use more data or --split last-session",
    "time": "the time split cuts at a timestamp, so a log whose events all fall on one side of it (or share one "
            "time) leaves a part empty; check the timestamps, or use --split last-session or --split user",
}


def epoch_label(epoch: float) -> str:
    """An epoch count as said to a user: ``3``, or ``0.37`` when a run stopped within an epoch (rounded
    down, so that a stop just before an epoch's end never reads as the whole epoch)."""
    # (+1e-9: 0.29 * 100 is 28.999...)
    return f"{epoch:g}" if float(epoch).is_integer() else f"{math.floor(epoch * 100 + 1e-9) / 100:.2f}"


def fit(
    model: torch.nn.Module,
    dataset,
    config: Config,
    *,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    loss_fn: Callable | None = None,
    evaluate_fn: Callable | None = None,
    on_step: Callable[[int], None] | None = None,
    model_name: str | None = None,
    model_config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset``'s TRAIN sessions, early-stop on VALID ``mrr``, score TEST.

    ``loss_fn(model, user_emb, targets, batch=...)`` defaults to :func:`training_loss` of ``config.loss``
    and ``evaluate_fn(model, dataset, roles=...)`` to :func:`hiertcn.evaluate.evaluate` with the
    training windows (``config.max_session_len``).
    ``on_step(step)`` runs after every optimizer step. ``model_name``/``model_config`` (the
    ``build_model`` arguments) go into the checkpoints so they can rebuild the model. Writes ``last.pt``, ``best.pt``,
    ``history.json`` and ``metrics.json`` into ``run_dir`` (rank 0 only).
    """
    check_catalogue(model, dataset.csr)
    roles = np.asarray(dataset.role)
    for role, name in ((TRAIN, "TRAIN"), (TEST, "TEST")):
        if not (roles == role).any():  # found now rather than after the last epoch
            split = getattr(dataset, "info", {}).get("split", "?")
            raise ValueError(
                f"the dataset has no {name} sessions (split {split!r}: {int((roles == TRAIN).sum())} train, "
                f"{int((roles == VALID).sum())} valid, {int((roles == TEST).sum())} test); "
                + _EMPTY_SPLIT_HINTS.get(str(split).replace("_", "-"), "check the split options")  # info: last_session
            )
    if loss_fn is None:
        loss_fn = training_loss(config.loss, dataset)
    if evaluate_fn is None:
        from .evaluate import evaluate

        evaluate_fn = functools.partial(evaluate, max_session_len=config.max_session_len)  # windows as in training
    run_dir = Path(run_dir)
    rank, world = distributed()
    writes = rank == 0
    if writes and not resume:
        # A fresh run replaces the one in run_dir: none of its files may outlive it (a kill before the first
        # checkpoint would leave the old best.pt to evaluate, and the old last.pt to --resume).
        for name in ("last.pt", "best.pt", "history.json", "metrics.json"):
            (run_dir / name).unlink(missing_ok=True)
    device = resolve_device(config.device)
    bf16 = config.precision == "bf16"
    if bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bf16 arithmetic (sm_80 or "
                         "newer has); use precision fp32")  # fmt: skip
    seed_everything(config.seed)
    model.to(device)

    users = np.arange(dataset.csr.n_users)[rank::world]
    source = batch_source(model, dataset, config, users=users, loss_fn=loss_fn)
    if world > 1 and _any_rank(len(source.users) == 0, world, device):
        raise ValueError(f"{world} ranks but some get no user with TRAIN sessions: use fewer ranks")
    optimizer = build_adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    step_fn = LossStep(model, loss_fn)
    if world > 1:
        # Unused parameters are normal: the state update after a lane's last window feeds only the next batch.
        step_fn = torch.nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    run = {
        "epoch": 0, "batch": 0, "step": 0, "train_time": 0.0, "wait_time": 0.0, "tokens": 0,
        "epoch_loss": 0.0, "epoch_targets": 0, "best_mrr": -math.inf, "bad_epochs": 0, "history": [], "curve": [],
        "carry_over": True,  # the queue lanes' stream runs on across epochs (QueueBatcher carry_over)
    }  # fmt: skip
    lane_state = None
    catalogue, data = catalogue_fingerprint(dataset), data_fingerprint(dataset)
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path, map_location=device)
        check_same_data(ckpt, dataset, catalogue, data, last_path)
        model.load_state_dict(ckpt["model"])
        load_adam_state(optimizer, ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        run = ckpt["run"]
        if getattr(model, "carries_state", False) and not run.get("carry_over"):
            raise ValueError(f"{last_path} was written before the queue lanes ran on across epochs (2026-12-01); "
                             "its batches and lane state cannot be resumed exactly by this version: start afresh "
                             "(--overwrite), or resume with the hiertcn that started it")  # fmt: skip
        mine = ckpt  # written before checkpoints kept every rank's state: lane_state and rng at the top
        if "ranks" in ckpt:  # each rank carries its own users' lanes and RNG
            if len(ckpt["ranks"]) != world:
                raise ValueError(f"{last_path} was written by {len(ckpt['ranks'])} rank(s); resume it with as many, "
                                 f"not {world}")  # fmt: skip
            mine = ckpt["ranks"][rank]
        lane_state = None if mine["lane_state"] is None else mine["lane_state"].to(device)
        torch.set_rng_state(mine["rng"]["torch"].cpu())
        if device.type == "cuda" and mine["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(mine["rng"]["cuda"].cpu(), device)

    def save_last() -> None:
        """``last.pt`` with every rank's carried lane state and RNG (a collective: every rank calls it)."""
        mine = {"lane_state": None if lane_state is None else lane_state.detach().cpu(), "rng": _rng_state(device)}
        ranks = [mine]
        if world > 1:
            ranks = [None] * world
            dist.all_gather_object(ranks, mine)
        if writes:
            save_checkpoint(last_path, {**checkpoint_payload(), "ranks": ranks})

    def checkpoint_payload() -> dict[str, Any]:
        return {
            "config": config.to_dict(),
            "model_name": model_name,  # None: load_model cannot rebuild it (a model outside build_model)
            "model_class": type(model).__name__,
            "model_config": model_config or {},
            "n_items": int(dataset.csr.n_items),
            "catalogue": catalogue,
            "data": data,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "run": run,
        }

    def account(values: list[float], info: dict) -> None:
        """A step's reported numbers, once read, into the run's totals and the progress bar."""
        here, _, n_targets = values
        shown["loss"] = here
        if info["active"]:  # an idle step trains nothing
            run["epoch_loss"] += here * int(n_targets)
            run["epoch_targets"] += int(n_targets)
            run["curve"].append((info["step"] + 1, here))
            run["tokens"] += info["tokens"]
            shown["tokens"] += info["tokens"]

    reports = _StepReports(optimizer, device, world, account, _defers_step_reports(optimizer, device, world))
    has_valid = config.validate and bool((np.asarray(dataset.role) == VALID).any())
    stop = _patience_spent(run, config)
    # A resumed run whose time is spent trains nothing more (raise max_time to go on).
    out_of_time = config.max_time is not None and run["train_time"] >= config.max_time
    while run["epoch"] < config.epochs and not stop and not out_of_time:
        epoch = run["epoch"]
        n_batches = n_mine = source.n_batches(epoch)
        rank_batches = [n_mine]
        if world > 1:
            # Every rank takes as many DDP steps as the rank with the most batches; one that has run out takes
            # idle steps (a batch weighted 0), so no rank's last batches are dropped.
            counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
            dist.all_gather(counts, torch.tensor([n_mine], device=device))
            rank_batches = [int(c) for c in counts]
            n_batches = max(rank_batches)
        model.train()
        if getattr(model, "carries_state", False) and lane_state is None:  # lanes carry on across epochs
            lane_state = model.init_state(config.n_queues, device)
        own = source.batches(epoch, start=run["batch"]) if run["batch"] < n_mine else iter(())
        loader = Prefetcher(_take(own, n_mine - run["batch"]), config.prefetch)
        bar = tqdm(
            total=n_batches, initial=run["batch"], desc=f"{model_name or type(model).__name__} epoch {epoch + 1}",
            unit="batch", disable=not (progress and writes), leave=False,
        )  # fmt: skip
        epoch_start, epoch_wait0, last_batch = time.perf_counter(), 0.0, None
        shown_start, shown = epoch_start, {"loss": math.nan, "tokens": 0}
        out_of_time = False
        try:
            batches = iter(loader)
            while run["batch"] < n_batches:
                active = run["batch"] < n_mine
                if active:
                    batch = next(batches).to(device, non_blocking=True)
                elif last_batch is None:  # resumed past this rank's batches: any batch of its own will do
                    batch = next(iter(source.batches(epoch))).to(device)
                else:
                    batch = last_batch
                last_batch = batch
                # bf16: the forward and loss under autocast; backward outside it, as torch.autocast asks.
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss, new_state = step_fn(batch, lane_state)
                # DDP averages over every rank: weight the ranks still in the epoch so that they share it.
                n_active = sum(n > run["batch"] for n in rank_batches)
                optimizer.zero_grad(set_to_none=True)
                (loss * (world / n_active if active else 0.0)).backward()
                if active:
                    lane_state = new_state
                # The gradient norm (clipping with an infinite bound changes nothing): a finite loss can still
                # give inf/NaN gradients, and one step on them would turn the weights, and the next checkpoint, NaN.
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm or math.inf)
                stats = torch.stack([loss.detach().double(), grad_norm.double(), batch.target_mask.sum().double()])
                reports.step(stats, {"epoch": epoch, "batch": run["batch"], "step": run["step"], "active": active,
                                     "tokens": batch.n_tokens, "last_path": last_path})  # fmt: skip
                run["batch"] += 1
                run["step"] += 1
                now = time.perf_counter()
                # Redrawn by update() at most every 0.1 s: a redraw per step costs 80 us of host time.
                bar.set_postfix(
                    loss=f"{shown['loss']:.3f}",
                    inter_s=f"{shown['tokens'] / max(now - shown_start, 1e-9):.0f}",
                    wait=f"{loader.wait_s / max(now - shown_start, 1e-9):.0%}",
                    refresh=False,
                )
                bar.update()
                if config.max_time is not None:
                    out_of_time = _any_rank(run["train_time"] + now - epoch_start >= config.max_time, world, device)
                if config.checkpoint_every and run["step"] % config.checkpoint_every == 0:
                    reports.flush()  # the checkpoint's run totals count this step, and it is known to be finite
                    _account(run, epoch_start, loader, epoch_wait0)
                    save_last()
                    epoch_start, epoch_wait0 = time.perf_counter(), loader.wait_s  # writing it is not training
                if on_step is not None:
                    on_step(run["step"])
                if out_of_time:
                    break
            reports.flush()
        finally:
            loader.close()
            bar.close()
        _account(run, epoch_start, loader, epoch_wait0)
        # Out of time before the epoch's last batch: the weights are validated as a candidate for best.pt,
        # but the epoch is not over: no lr decay, no patience, and last.pt keeps its place (--resume with a
        # larger --max-time trains the rest of it).
        partial = out_of_time and run["batch"] < n_batches
        if not partial:
            scheduler.step()
        row = {
            "epoch": epoch + (run["batch"] / n_batches if partial else 1),
            "step": run["step"],
            "train_loss": run["epoch_loss"] / max(run["epoch_targets"], 1),
            "train_time_s": run["train_time"],
            **({"partial": True} if partial else {}),
        }
        improved = False
        if has_valid:
            model.eval()
            with torch.no_grad():
                val = evaluate_sharded(evaluate_fn, model, dataset, (VALID,))
            row.update({f"val_{k}": v for k, v in val.items() if "/" not in k})
            if val["mrr"] > run["best_mrr"]:
                improved = True
                run["best_mrr"] = val["mrr"]
                run["bad_epochs"] = run["bad_epochs"] if partial else 0
                if writes:
                    save_checkpoint(best_path, _weights_payload(checkpoint_payload()))
            elif not partial:
                run["bad_epochs"] += 1
            stop = _patience_spent(run, config)
        run["history"].append(row)
        if progress and writes:
            shown = f", valid mrr {row['val_mrr']:.4f}" if "val_mrr" in row else ""
            best = " (best so far: best.pt)" if improved else ""
            tqdm.write(f"{model_name or type(model).__name__} epoch {epoch_label(row['epoch'])}: train loss "
                       f"{row['train_loss']:.4f}{shown}{best}{', stopped within the epoch' if partial else ''}",
                       file=sys.stderr)  # beside the progress bars  # fmt: skip
        if not partial:
            run["epoch"], run["batch"] = epoch + 1, 0
            run["epoch_loss"], run["epoch_targets"] = 0.0, 0
        save_last()
        if out_of_time:
            break

    if writes and not has_valid:  # no validation: the last weights are the result
        save_checkpoint(best_path, _weights_payload(checkpoint_payload()))
    if world > 1:
        dist.barrier()
    best = load_checkpoint(best_path, map_location=device)
    model.load_state_dict(best["model"])
    model.eval()
    with torch.no_grad():
        metrics = evaluate_sharded(evaluate_fn, model, dataset, (TEST,))
    tokens = run["tokens"]
    if world > 1:  # every rank trained on its own users at once: the run's throughput is their sum
        total = torch.tensor([float(tokens)], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        tokens = total.item()
    metrics.update(
        {
            "epochs": run["epoch"],
            "steps": run["step"],
            "train_time_s": run["train_time"],
            "interactions_per_s": tokens / max(run["train_time"], 1e-9),
            "wait_fraction": run["wait_time"] / max(run["train_time"], 1e-9),
        }
    )
    if writes:
        write_json(run_dir / "history.json", json_safe({"epochs": run["history"], "steps": run["curve"]}))
        write_metrics(run_dir, metrics)
    stopped = "max_time" if out_of_time else "patience" if stop else "epochs"
    return TrainResult(metrics=metrics, history=run["history"], curve=run["curve"], run_dir=run_dir, stopped=stopped)


def evaluate_sharded(evaluate_fn: Callable, model, dataset, roles: tuple[int, ...]) -> dict[str, float]:
    """``evaluate_fn`` on this rank's users, combined exactly across ranks.

    Every mean is weighted by the count it averages over (:func:`hiertcn.metrics.combine_results`),
    so the result equals one process scoring every user.
    """
    rank, world = distributed()
    if world == 1:
        return dict(evaluate_fn(model, dataset, roles=roles))
    csr = dataset.csr
    role = np.asarray(dataset.role).copy()
    session_user = np.repeat(np.arange(csr.n_users), np.diff(csr.user_ptr))
    role[session_user % world != rank] = -1  # other ranks score those users
    local = {}
    if np.isin(role, roles).any():
        shard = SimpleNamespace(csr=csr, role=role, impressions=getattr(dataset, "impressions", None))
        local = dict(evaluate_fn(model, shard, roles=roles))
    parts = [None] * world
    dist.all_gather_object(parts, local)
    return combine_results([p for p in parts if p])


def json_safe(obj):
    """``obj`` with every non-finite float as None: JSON has no NaN (``later/mrr`` of a split with no later
    event), and strict parsers (``JSON.parse``, ``jq``) refuse the ``NaN`` that ``json.dumps`` writes."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_metrics(out_dir: str | Path, metrics: dict) -> Path:
    return write_json(Path(out_dir) / "metrics.json", json_safe(metrics), indent=2, allow_nan=False)


def _any_rank(flag: bool, world: int, device) -> bool:
    """``flag`` OR-ed over the ranks, so that no rank leaves the DDP step sequence alone."""
    if world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _defers_step_reports(optimizer: torch.optim.Optimizer, device: torch.device, world: int) -> bool:
    """Whether the step reports may be read a step late: one CUDA process whose Adam is fused, so that the
    optimizer itself can skip a non-finite step on the device (``found_inf``)."""
    return device.type == "cuda" and world == 1 and bool(optimizer.defaults.get("fused"))


class _StepReports:
    """Each step's loss, gradient norm and target count, read on the host, and the guard that stops training
    on a non-finite loss or gradient before its update lands.

    Read at once, the three numbers make the host wait for the GPU every step, and the GPU then idles while
    the host prepares the next one. Deferred (:func:`_defers_step_reports`), a step's numbers are copied to
    the host behind its work and read after the next step is queued: Adam gets the step's non-finite flag
    as ``found_inf`` and skips it on the device, and reading it raises, one step later, naming the step.
    ``account(values, info)`` gets every step's numbers, in order, as they are read.
    """

    def __init__(self, optimizer, device: torch.device, world: int, account: Callable, deferred: bool):
        self.optimizer, self.device, self.world, self.account = optimizer, device, world, account
        self.deferred = deferred
        self.pending = None

    def step(self, stats: torch.Tensor, info: dict) -> None:
        """The optimizer step for ``stats`` = (loss, gradient norm, targets) as float64 on the device."""
        if not self.deferred:
            values = stats.tolist()
            self._check(values, info)
            self.optimizer.step()
            self.account(values, info)
            return
        self.optimizer.found_inf = (~torch.isfinite(stats[:2]).all()).float()
        self.optimizer.step()
        host = stats
        event = None
        if stats.is_cuda:
            host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
            host.copy_(stats, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self.flush()
        self.pending = (host, event, info)

    def flush(self) -> None:
        """Read the step still in flight, if any (before a checkpoint, and at the end of an epoch)."""
        if self.pending is None:
            return
        host, event, info = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        values = host.tolist()
        self._check(values, info)
        self.account(values, info)

    def _check(self, values: list[float], info: dict) -> None:
        here, norm, _ = values
        if _any_rank(not (math.isfinite(here) and math.isfinite(norm)), self.world, self.device):  # all stop together
            what = (f"loss is {here}" if not math.isfinite(here) else f"gradient norm is {norm}"
                    if not math.isfinite(norm) else "loss or gradients are not finite on another rank")  # fmt: skip
            kept = f"; the last good checkpoint is {info['last_path']}" if info["last_path"].exists() else ""
            raise NonFiniteLossError(
                f"{what} at epoch {info['epoch'] + 1}, batch {info['batch'] + 1} (step {info['step'] + 1})"
                f"{kept}. Try a lower --lr or a smaller clip_norm."
            )


def _patience_spent(run: dict, config: Config) -> bool:
    return config.patience > 0 and run["bad_epochs"] >= config.patience


def _account(run: dict, since: float, loader: Prefetcher, wait_since: float) -> None:
    run["train_time"] += time.perf_counter() - since
    run["wait_time"] += loader.wait_s - wait_since


def _take(iterable, n: int):
    for i, item in enumerate(iterable):
        if i >= n:
            return
        yield item


def _rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _weights_payload(payload: dict[str, Any]) -> dict[str, Any]:
    keep = ("config", "model_name", "model_class", "model_config", "n_items", "catalogue", "data", "model")
    return {k: payload[k] for k in keep}
