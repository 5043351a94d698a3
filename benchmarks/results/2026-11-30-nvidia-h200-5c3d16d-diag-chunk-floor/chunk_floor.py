"""Run 3 (2026-11-30): a floor on the conv backward's rows per program (fewer fp32 weight partials at small T).
Prediction: at T=877 the partials fall from 28 x 327 KB = 9.2 MB to 4 x 327 KB at a 256-row floor, so HierTCN's
queue peak at 500 events falls from 12.0 toward ~4-5 MiB (FlatTCN's falls too); bwd time at T<=2k may rise."""
import os, sys, statistics, time
sys.path.insert(0, ".")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
import torch
from triton.testing import do_bench
import hiertcn_kernels as K
import hiertcn_kernels.triton.conv as TC
from hiertcn.bench import memory_vs_history, model_step, packed_lengths
from hiertcn.cli import load_dataset
from hiertcn.config import Config
from hiertcn.train import training_loss

ORIG = TC._chunk_rows
FLOORS = [None, 64, 128, 256, 512]


def set_floor(floor):
    TC._chunk_rows = ORIG if floor is None else (lambda t, halo, device, per_sm=1, _f=floor: ORIG(t, max(halo, _f), device, per_sm))


def n_chunks(t, floor, halo=4):
    set_floor(floor)
    rows = TC._chunk_rows(t, halo, torch.device("cuda"), per_sm=TC._bwd_programs_per_sm(False, torch.empty(1, device="cuda")))
    set_floor(None)
    return -(-t // rows)


dev = torch.device("cuda")
print("== kernel: tcn_block relu fp32 C=128 k=5 d=2, fwd+bwd; median ms and peak MiB (allocator growth)")
for t in (877, 1566, 12434, 65536):
    lengths = packed_lengths(t, 0)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(dev)
    tt = int(cu[-1])
    x = torch.randn(tt, 128, device=dev, requires_grad=True)
    w = (torch.randn(128, 128, 5, device=dev) / 25).requires_grad_()
    b = torch.randn(128, device=dev, requires_grad=True)
    dy = torch.randn(tt, 128, device=dev)

    def run():
        y = K.tcn_block(x, w, b, dilation=2, activation="relu", cu_seqlens=cu)
        torch.autograd.grad(y, (x, w, b), dy)

    line = []
    for floor in FLOORS:
        set_floor(floor)
        run()
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
        run(); torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        ms = do_bench(run, warmup=10, rep=100, return_mode="median")
        line.append(f"floor {floor}: {ms:.3f} ms {peak:.2f} MiB ({n_chunks(tt, floor)} chunks)")
    set_floor(None)
    print(f"T={tt}: " + " | ".join(line), flush=True)

print("== memory_vs_history at 500 events (8 users), HierTCN queue / FlatTCN whole, allocator peak")
for floor in (None, 128, 256):
    set_floor(floor)
    (row,) = memory_vs_history([500], device=dev)
    print(f"floor {floor}: hiertcn {row['hiertcn_queue_bytes'] / 2**20:.2f} MiB, flat_tcn {row['flat_tcn_whole_bytes'] / 2**20:.2f} MiB, ratio {row['ratio']:.3f}", flush=True)
set_floor(None)

print("== train step (ms, median of 21 interleaved rounds), HierTCN per floor vs GRU4Rec")
for lanes in (32, 256):
    config = Config(device="cuda", n_queues=lanes, batch_users=lanes)
    dataset, _ = load_dataset(config)
    loss_fn = training_loss(config.loss, dataset)
    hier, _, hb = model_step("hiertcn", dataset, config, loss_fn, dev)
    gru, _, gb = model_step("gru4rec", dataset, config, loss_fn, dev)
    floors = (None, 128, 256)
    times = {f: [] for f in floors}; times["gru4rec"] = []
    for r in range(24):
        for key in (*floors, "gru4rec"):
            if key != "gru4rec":
                set_floor(key)
            fn = gru if key == "gru4rec" else hier
            torch.cuda.synchronize(); t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
            if r >= 3:
                times[key].append(time.perf_counter() - t0)
        set_floor(None)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    g = gb.n_tokens / med["gru4rec"]
    print(f"{lanes} lanes (hiertcn {hb.n_tokens} tok, gru4rec {gb.n_tokens} tok): gru4rec {med['gru4rec']:.2f} ms; "
          + "; ".join(f"floor {f}: {med[f]:.2f} ms, {hb.n_tokens / med[f] / g:.2f}x" for f in floors), flush=True)
