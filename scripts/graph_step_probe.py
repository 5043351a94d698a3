"""How fast HierTCN's training step would be without its host overhead: one step captured in a CUDA graph.

    PYTHONPATH=. python3 scripts/graph_step_probe.py [--repeats N] [--device cuda|cpu]

A diagnostic, not the training path. At the release's 32 lanes the GPU step is host-bound (the
profile: 8.8 ms of launches for 2.4 ms of GPU work), and the lever left is capturing the step in a
CUDA graph, which needs static shapes (bucketed token counts, padded runs, a masked loss). Before
building that, this measures what it would buy: the step of ``hiertcn bench``'s first HierTCN
batch (one batch, so its shapes are static already), forward + backward + fused capturable Adam,
captured once and replayed, against the same step run eagerly, and GRU4Rec's eager step on its own
first batch (``hiertcn bench``'s comparison). Interactions/s ratios against GRU4Rec, all timed in
the same interleaved rounds.

Parity: a second HierTCN with the same seed and the same warm-up steps runs eagerly beside the
replays; their losses must agree (printed, and a mismatch fails). Capture forbids host reads; the
step makes none (the batch carries its layouts, and its item ids are checked on the host).

GRU4Rec is not captured: its forward reads its lengths back to the host (``pack_padded_sequence``),
so graphs would need the same static-shape work there; the probe says so rather than compare a
graphed HierTCN with an eager GRU4Rec as if both were graphed. On a CPU (no CUDA graphs) only the
eager parity part runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hiertcn.bench import _train_step, interleaved_medians, model_step
from hiertcn.cli import load_dataset
from hiertcn.config import Config
from hiertcn.train import LossStep, training_loss


def capturable_adam(model, lr):
    # Fused Adam keeps its step counts on the device when capturable: no host value inside the graph.
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3, help="eager steps before capture (both HierTCN copies)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    config = Config(device=device.type)
    dataset, _ = load_dataset(config)
    loss_fn = training_loss(config.loss, dataset)

    _, eager_model, batch = model_step("hiertcn", dataset, config, loss_fn, device)
    graph_model = copy.deepcopy(eager_model)
    print(f"hiertcn batch: {batch.n_tokens} tokens, {batch.n_sessions} windows, {batch.n_lanes} lanes", flush=True)
    state = eager_model.init_state(batch.n_lanes, device)
    eager_opt, graph_opt = capturable_adam(eager_model, config.lr), capturable_adam(graph_model, config.lr)
    eager_loss, graph_loss = LossStep(eager_model, loss_fn), LossStep(graph_model, loss_fn)

    def eager_step():
        loss, _ = eager_loss(batch, state)
        eager_opt.zero_grad(set_to_none=True)
        loss.backward()
        eager_opt.step()
        return loss.detach()

    # Warm-up off the default stream, as capture wants (the kernels compile, the optimizer makes its state).
    stream = torch.cuda.Stream() if cuda else None
    with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
        for _ in range(args.warmup):  # the same steps on both copies: equal weights and optimizer state
            eager_step()
            _train_step(graph_loss, graph_opt, batch, state)
    if not cuda:
        print(f"graph capture: skipped (CUDA graphs need a GPU); eager step ok, loss {float(eager_step()):.6f}")
        return
    torch.cuda.current_stream().wait_stream(stream)

    graph = torch.cuda.CUDAGraph()
    graph_opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss, _ = graph_loss(batch, state)
        static_loss.backward()
        graph_opt.step()

    # Parity: replays and eager steps from the same weights give the same losses.
    worst = 0.0
    for i in range(5):
        graph.replay()
        want = eager_step()
        got = static_loss.detach().clone()
        worst = max(worst, abs(float(got) - float(want)))
        print(f"step {i}: eager loss {float(want):.6f}, graph replay {float(got):.6f}")
    if worst > 1e-4 * max(1.0, abs(float(want))):
        raise SystemExit(f"graph replay and eager step disagree by {worst:.3g}")

    gru4rec_step, _, gru_batch = model_step("gru4rec", dataset, config, loss_fn, device)
    medians = interleaved_medians(
        {"hiertcn eager": eager_step, "hiertcn graph replay": graph.replay, "gru4rec eager": gru4rec_step},
        repeats=args.repeats, warmup=2, device=device,
    )
    rates = {"hiertcn eager": batch.n_tokens, "hiertcn graph replay": batch.n_tokens, "gru4rec eager": gru_batch.n_tokens}
    base = rates["gru4rec eager"] / medians["gru4rec eager"]
    for name, seconds in medians.items():
        per_s = rates[name] / seconds
        print(f"{name:22s} {1e3 * seconds:8.2f} ms  {per_s:10.0f} interactions/s  {per_s / base:5.2f}x gru4rec eager")
    print("(gru4rec is not captured: its forward reads its lengths back to the host; a graphed comparison "
          "needs static shapes there too)")


if __name__ == "__main__":
    main()
