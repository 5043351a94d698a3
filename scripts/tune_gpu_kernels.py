"""Sweep the Triton kernels' launch choices on a GPU, check each against the shipped choice, print a table.

    PYTHONPATH=. python3 scripts/tune_gpu_kernels.py [--out DIR] [--tokens T] [--quick]

The first H200 run (benchmarks/README.md) found two kernels under their targets, each with a launch
choice nobody had timed:
- the conv block's backward (``_bwd_kernel``): one program per SM walks its row chunk's three
  phases in series, at 4-5% of the roofline. Swept: programs per SM (row chunks), warps, pipeline
  stages; relu and gated; bf16 and fp32 (TF32).
- ``segment_reduce`` / its mean backward on HierTCN's short sessions (1..20 rows), slower than
  ``torch.segment_reduce``. Swept: the short-segment ("narrow") tile (segments x rows x warps).
Every variant's outputs are compared with the shipped variant's (same inputs; only the sum order may
differ) and its time is the median of ``triton.testing.do_bench``, the shipped variant timed in the
same run. ``--out DIR`` also writes ``tune.json``. About 3-4 minutes on an H200 (mostly compiles).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hiertcn_kernels as K
import hiertcn_kernels.triton.conv as TC
import hiertcn_kernels.triton.segment as TS


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def session_offsets(total: int, device, seed: int = 0) -> torch.Tensor:
    """Session lengths 1..20 summing to ``total`` (HierTCN's windows)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 21, (total // 10 + 1,), generator=gen)
    lengths = lengths[lengths.cumsum(0) < total]
    lengths = torch.cat([lengths, torch.tensor([total - int(lengths.sum())])])
    return torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(device)


# ------------------------------------------------------------------------------------------ conv backward


def conv_variants(quick: bool):
    """(name, programs per SM, overrides of _bwd_opts); the first is the shipped choice."""
    variants = [("shipped", 1, {})]  # 8 warps; 2 stages (relu) or 1 (gated): swept again below, a noise check
    for per_sm in (1, 2, 4):
        for warps in (4, 8):
            for stages in (1, 2):
                variants.append((f"{per_sm}/SM {warps}w {stages}st", per_sm, {"num_warps": warps, "num_stages": stages}))
    return variants[:4] if quick else variants


def chunk_rows(per_sm: int):
    def rows(t: int, halo: int, device: torch.device) -> int:
        programs = torch.cuda.get_device_properties(device).multi_processor_count * per_sm
        block = TC._row_block()
        return triton.cdiv(max(triton.cdiv(t, programs), halo, 1), block) * block

    return rows


def sweep_conv(tokens: int, quick: bool) -> list[dict]:
    return [row for dtype in (torch.bfloat16, torch.float32) for mode in ("relu", "gated")
            for row in conv_case(tokens, dtype, mode, quick)]  # fmt: skip


def conv_case(tokens: int, dtype: torch.dtype, mode: str, quick: bool) -> list[dict]:
    c, k, dilation = 128, 5, 2
    torch.manual_seed(0)
    c_out = 2 * c if mode == "gated" else c
    x = torch.randn(tokens, c, device="cuda", dtype=dtype)
    weight = (torch.randn(c_out, c, k, device="cuda") / math.sqrt(c * k)).to(dtype)
    bias = (0.5 * torch.randn(c_out, device="cuda")).to(dtype)
    out_weight = (torch.randn(c, c, device="cuda") / math.sqrt(c)).to(dtype) if mode == "gated" else None
    rows, start = TC._as_rows(x, session_offsets(tokens, "cuda"))
    wt = weight.permute(2, 1, 0).contiguous()
    dy = torch.randn(tokens, c, device="cuda", dtype=dtype)
    needs = {"x": True, "weight": True, "bias": True, "out_weight": mode == "gated", "out_bias": mode == "gated"}

    def backward():
        return TC._backward(dy, rows, start, wt, bias, out_weight, dilation, mode, needs)

    shipped_chunks, shipped_opts = TC._chunk_rows, TC._bwd_opts
    out, reference, shipped_ms = [], None, None
    for name, per_sm, overrides in conv_variants(quick):
        TC._chunk_rows = chunk_rows(per_sm)
        TC._bwd_opts = lambda *a, _o=overrides, **kw: {**shipped_opts(*a, **kw), **_o}
        try:
            grads = [g for g in backward() if g is not None]
            reference = reference or grads
            err = max(rel_err(g, r) for g, r in zip(grads, reference))
            ms = do_bench(backward, warmup=25, rep=200, return_mode="median")
            status = "ok" if err < (2e-2 if dtype == torch.bfloat16 else 5e-3) else "WRONG"
        except Exception as exc:  # noqa: BLE001 (a variant that fails to compile, out of resources, is a result too)
            err, ms, status = float("nan"), float("nan"), f"failed: {type(exc).__name__}: {str(exc)[:80]}"
        finally:
            TC._chunk_rows, TC._bwd_opts = shipped_chunks, shipped_opts
        shipped_ms = shipped_ms or ms
        row = {"kernel": f"conv bwd {mode}", "dtype": str(dtype)[6:], "variant": name, "ms": ms,
               "speedup": shipped_ms / ms, "max_rel_err_vs_shipped": err, "status": status}  # fmt: skip
        out.append(row)
        print(f"{row['kernel']:16s} {row['dtype']:9s} {name:16s} {ms:8.3f} ms  {row['speedup']:5.2f}x  err {err:.1e}  "
              f"{status}", flush=True)
    return out


# ------------------------------------------------------------------------------------------ segment ops


@dataclasses.dataclass(frozen=True)
class _SweptTiling(TS._Tiling):
    narrow_rows: int = 1  # BLOCK_T of the narrow tile (shipped: 1)

    @property
    def narrow(self) -> tuple[int, int, int]:
        return self.narrow_pieces, self.narrow_rows, self.narrow_warps


def segment_tiles(quick: bool):
    """(BLOCK_N, BLOCK_T, warps) narrow tiles; the first is the shipped one."""
    shipped = TS._GPU_TILING
    tiles = [(shipped.narrow_pieces, 1, shipped.narrow_warps), (64, 1, 8), (16, 1, 4), (16, 2, 8), (8, 4, 4),
             (8, 4, 8), (4, 8, 4), (2, 16, 4), (32, 1, 4)]
    return tiles[:3] if quick else tiles


def sweep_segment(tokens: int, quick: bool) -> list[dict]:
    cu = session_offsets(tokens, "cuda", seed=1)
    return [row for dtype in (torch.float32, torch.bfloat16) for row in segment_case(tokens, cu, dtype, quick)]


def segment_case(tokens: int, cu: torch.Tensor, dtype: torch.dtype, quick: bool) -> list[dict]:
    values = torch.randn(tokens, 128, device="cuda", dtype=dtype, requires_grad=True)
    grad = torch.randn(cu.numel() - 1, 128, device="cuda", dtype=dtype)
    plain, copy_dst, lengths = values.detach(), torch.empty_like(values.detach()), cu.diff()
    copy_ms = do_bench(lambda: copy_dst.copy_(plain), warmup=25, rep=200, return_mode="median")
    torch_ms = do_bench(lambda: torch.segment_reduce(plain, "mean", lengths=lengths), warmup=25, rep=200,
                        return_mode="median")  # fmt: skip
    print(f"segment {str(dtype)[6:]}: copy {copy_ms:.3f} ms, torch.segment_reduce mean fwd {torch_ms:.3f} ms", flush=True)

    def forward():
        return K.segment_reduce(plain, cu, "mean")

    def forward_backward():
        return torch.autograd.grad(K.segment_reduce(values, cu, "mean"), values, grad)

    shipped = TS._GPU_TILING
    out, reference, shipped_fwd, shipped_fb = [], None, None, None
    for block_n, block_t, warps in segment_tiles(quick):
        TS._GPU_TILING = _SweptTiling(**{**dataclasses.asdict(shipped), "narrow_pieces": block_n, "narrow_warps": warps},
                                      narrow_rows=block_t)  # fmt: skip
        try:
            result = (forward(), *forward_backward())
            reference = reference or result
            err = max(rel_err(a, b) for a, b in zip(result, reference))
            fwd = do_bench(forward, warmup=25, rep=200, return_mode="median")
            fb = do_bench(forward_backward, warmup=25, rep=200, return_mode="median")
            status = "ok" if err < 1e-5 else "WRONG"
        except Exception as exc:  # noqa: BLE001 (as in conv_case)
            err, fwd, fb, status = float("nan"), float("nan"), float("nan"), f"failed: {type(exc).__name__}"
        finally:
            TS._GPU_TILING = shipped
        shipped_fwd, shipped_fb = shipped_fwd or fwd, shipped_fb or fb
        name = f"{block_n}x{block_t} {warps}w"
        row = {"kernel": "segment_reduce mean, 1..20 rows", "dtype": str(dtype)[6:], "variant": name,
               "fwd_ms": fwd, "fwd_bwd_ms": fb, "speedup_fwd": shipped_fwd / fwd, "speedup_fwd_bwd": shipped_fb / fb,
               "copy_fraction_fwd": copy_ms / fwd, "vs_torch_fwd": torch_ms / fwd, "max_rel_err_vs_shipped": err,
               "status": status}  # fmt: skip
        out.append(row)
        print(f"segment {row['dtype']:9s} {name:10s} fwd {fwd:.3f} ms ({row['speedup_fwd']:.2f}x, "
              f"{row['copy_fraction_fwd']:.0%} of copy, {row['vs_torch_fwd']:.2f}x torch)  fwd+bwd {fb:.3f} ms "
              f"({row['speedup_fwd_bwd']:.2f}x)  {status}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for tune.json")
    parser.add_argument("--tokens", type=int, default=2**20)
    parser.add_argument("--quick", action="store_true", help="three variants of each (a plumbing check)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("tune_gpu_kernels.py needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    rows = sweep_segment(args.tokens, args.quick) + sweep_conv(args.tokens, args.quick)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tune.json").write_text(json.dumps({"device": torch.cuda.get_device_name(0), "tokens": args.tokens,
                                                        "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
