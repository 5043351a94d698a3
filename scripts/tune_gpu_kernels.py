"""Sweep the Triton kernels' launch choices on a GPU, check each against the shipped choice, print a table.

    PYTHONPATH=. python3 scripts/tune_gpu_kernels.py [--out DIR] [--tokens T] [--channels C] [--only conv|segment]
                                                     [--quick]

The first H200 run (benchmarks/README.md) found two kernels under their targets, each with a launch
choice nobody had timed:
- the conv block's backward (``_bwd_kernel``): one program per SM walked its row chunk's three
  phases in series, at 4-5% of the roofline (the second run's sweep picked today's choices,
  ``_bwd_programs_per_sm`` and ``_bwd_opts``). Swept: programs per SM (row chunks), warps, pipeline
  stages; relu and gated; bf16 and fp32 (TF32). Also a candidate design, "split": the same three
  phases as three launches over the whole batch (``da`` written once to a ``(T, C_out)`` buffer, so
  no halo recompute; phases 1 and 2 tiled like the forward, which is 2-6x faster than cuDNN),
  with the weight phase's programs per SM swept.
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
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hiertcn_kernels as K
import hiertcn_kernels.triton.conv as TC
import hiertcn_kernels.triton.segment as TS
from hiertcn.bench import packed_lengths
from hiertcn_kernels.triton.conv import _act_rows, _dx_rows, _tn_chunk


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def session_offsets(total: int, device, seed: int = 0) -> torch.Tensor:
    """Session lengths 1..20 summing to exactly ``total`` (HierTCN's windows): ``hiertcn bench``'s, topped up."""
    lengths = packed_lengths(total, seed)
    rest = total - int(lengths.sum())  # below the next length drawn, so at most 19
    lengths = torch.cat([lengths, torch.tensor([rest])]) if rest else lengths
    return torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(device)


# ------------------------------------------------------------------------------------------ conv backward


@triton.jit
def _split_act_kernel(x_ptr, start_ptr, wt_ptr, b_ptr, wout_ptr, dy_ptr, da_ptr, dx_ptr, h_ptr, T, C_in, C_out,
                      dilation, K: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr, WANT_H: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr,
                      DOT_PREC: tl.constexpr):  # fmt: skip
    """Split phase 1 on one row tile: ``da`` (whole-batch buffer), the residual part of ``dx`` (relu), ``h`` (gated)."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = rows < T
    _act_rows(x_ptr, start_ptr, wt_ptr, b_ptr, wout_ptr, dy_ptr, da_ptr, dx_ptr, h_ptr, rows, ok, ok, C_in, C_out,
              dilation, K, GATED, HAS_BIAS, WANT_H, BLOCK_T, BLOCK_I, BLOCK_O, BLOCK_C, DOT_PREC)


@triton.jit
def _split_dx_kernel(res_ptr, da_ptr, start_ptr, wt_ptr, dx_ptr, T, C_in, C_out, dilation, K: tl.constexpr,
                     HAS_RES: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr,
                     DOT_PREC: tl.constexpr):  # fmt: skip
    """Split phase 2 on one row tile: ``dx`` = the transposed conv of ``da`` (+ the residual)."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    _dx_rows(res_ptr, da_ptr, start_ptr, wt_ptr, dx_ptr, rows, rows < T, T, C_in, C_out, dilation, K, HAS_RES,
             BLOCK_T, BLOCK_I, BLOCK_O, DOT_PREC)


@triton.jit
def _split_w_kernel(x_ptr, da_ptr, h_ptr, dy_ptr, start_ptr, dw_part_ptr, db_part_ptr, dwo_part_ptr, dbo_part_ptr,
                    T, C_in, C_out, dilation, chunk_rows, K: tl.constexpr, WANT_OUT: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, DOT_PREC: tl.constexpr):  # fmt: skip
    """Split phase 3 on one row chunk: the weight (and output projection) partials, as the fused kernel's."""
    chunk = tl.program_id(0)
    r0 = chunk * chunk_rows
    r1 = tl.minimum(r0 + chunk_rows, T)
    _tn_chunk(x_ptr, da_ptr, start_ptr, dw_part_ptr, db_part_ptr, chunk, r0, r1, C_in, C_out, dilation, K,
              BLOCK_T, BLOCK_I, BLOCK_O, DOT_PREC)
    if WANT_OUT:
        _tn_chunk(h_ptr, dy_ptr, start_ptr, dwo_part_ptr, dbo_part_ptr, chunk, r0, r1, C_out // 2, C_in, 0, 1,
                  BLOCK_T, BLOCK_I, BLOCK_O, DOT_PREC)


def split_backward(dy, x, start, wt, bias, out_weight, dilation, mode, w_per_sm):
    """``TC._backward``'s gradients (all of them) from three launches; relu and gated blocks."""
    t, c_in = x.shape
    k, _, c_out = wt.shape
    gated = mode == "gated"
    dot_prec = TC._dot_precision(x)
    opts = TC._bwd_opts(gated, c_in, c_out, dot_prec)
    launch = {key: value for key, value in opts.items() if not key.isupper()}
    dx, da = torch.empty(t, c_in, device=x.device, dtype=x.dtype), torch.empty(t, c_out, device=x.device, dtype=x.dtype)
    h = torch.empty(t, c_out // 2, device=x.device, dtype=x.dtype) if gated else x
    _split_act_kernel[(triton.cdiv(t, opts["ACT_BLOCK_T"]),)](
        x, start, wt, x if bias is None else bias, x if out_weight is None else out_weight, dy, da, dx, h, t, c_in,
        c_out, dilation, K=k, GATED=gated, HAS_BIAS=bias is not None, WANT_H=gated, BLOCK_T=opts["ACT_BLOCK_T"],
        BLOCK_I=opts["ACT_BLOCK_I"], BLOCK_O=opts["ACT_BLOCK_O"], BLOCK_C=opts["BLOCK_C"], DOT_PREC=dot_prec, **launch,
    )  # fmt: skip
    _split_dx_kernel[(triton.cdiv(t, opts["BLOCK_T"]),)](
        dy if gated else dx, da, start, wt, dx, t, c_in, c_out, dilation, K=k, HAS_RES=True,
        BLOCK_T=opts["BLOCK_T"], BLOCK_I=opts["BLOCK_I"], BLOCK_O=opts["BLOCK_O"], DOT_PREC=dot_prec, **launch,
    )  # fmt: skip
    rows = TC._chunk_rows(t, 0, x.device, per_sm=w_per_sm)  # no halo: da is there for every row
    n = triton.cdiv(t, rows)
    f32 = {"device": x.device, "dtype": torch.float32}
    dw_part, db_part = torch.empty(n, k, c_in, c_out, **f32), torch.empty(n, c_out, **f32)
    dwo_part = torch.empty(n, 1, c_out // 2, c_in, **f32) if gated else dw_part
    dbo_part = torch.empty(n, c_in, **f32) if gated else db_part
    _split_w_kernel[(n,)](
        x, da, h, dy, start, dw_part, db_part, dwo_part, dbo_part, t, c_in, c_out, dilation, rows, K=k,
        WANT_OUT=gated, BLOCK_T=opts["BLOCK_T"], BLOCK_I=opts["BLOCK_I"], BLOCK_O=opts["BLOCK_O"], DOT_PREC=dot_prec, **launch,
    )  # fmt: skip
    dw = dw_part.sum(0).permute(2, 1, 0).to(wt.dtype)
    db = db_part.sum(0).to(x.dtype) if bias is not None else None
    dwo = dwo_part.sum(0)[0].T.to(x.dtype) if gated else None
    dbo = dbo_part.sum(0).to(x.dtype) if gated else None
    return dx, dw, db, dwo, dbo



def conv_variants(quick: bool):
    """(name, programs per SM, overrides of _bwd_opts); the first is the shipped choice (None, {}: no override)."""
    variants = [("shipped", None, {})]  # swept again below: a noise check
    for per_sm in (1, 2, 4):
        for warps in (4, 8):
            for stages in (1, 2):
                variants.append((f"{per_sm}/SM {warps}w {stages}st", per_sm, {"num_warps": warps, "num_stages": stages}))
    return variants[:4] if quick else variants


def sweep_conv(tokens: int, quick: bool, channels: int) -> list[dict]:
    return [row for dtype in (torch.bfloat16, torch.float32) for mode in ("relu", "gated")
            for row in conv_case(tokens, dtype, mode, quick, channels)]  # fmt: skip


def conv_case(tokens: int, dtype: torch.dtype, mode: str, quick: bool, c: int) -> list[dict]:
    k, dilation = 5, 2
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

    shipped_per_sm, shipped_opts = TC._bwd_programs_per_sm, TC._bwd_opts
    out, reference, shipped_ms = [], None, None
    for name, per_sm, overrides in conv_variants(quick):
        if per_sm is not None:
            TC._bwd_programs_per_sm = lambda *a, _n=per_sm: _n
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
            TC._bwd_programs_per_sm, TC._bwd_opts = shipped_per_sm, shipped_opts
        shipped_ms = shipped_ms or ms
        out.append(conv_row(mode, dtype, name, ms, shipped_ms, err, status))
    for w_per_sm in (1, 2) if quick else (1, 2, 4, 8):
        name = f"split, W {w_per_sm}/SM"
        try:
            grads = [g for g in split_backward(dy, rows, start, wt, bias, out_weight, dilation, mode, w_per_sm)
                     if g is not None]  # fmt: skip
            err = max(rel_err(g, r) for g, r in zip(grads, reference))
            ms = do_bench(lambda w=w_per_sm: split_backward(dy, rows, start, wt, bias, out_weight, dilation, mode, w),
                          warmup=25, rep=200, return_mode="median")  # fmt: skip
            status = "ok" if err < (2e-2 if dtype == torch.bfloat16 else 5e-3) else "WRONG"
        except Exception as exc:  # noqa: BLE001 (as above)
            err, ms, status = float("nan"), float("nan"), f"failed: {type(exc).__name__}: {str(exc)[:80]}"
        out.append(conv_row(mode, dtype, name, ms, shipped_ms, err, status))
    return out


def conv_row(mode, dtype, name, ms, shipped_ms, err, status) -> dict:
    row = {"kernel": f"conv bwd {mode}", "dtype": str(dtype)[6:], "variant": name, "ms": ms,
           "speedup": shipped_ms / ms, "max_rel_err_vs_shipped": err, "status": status}  # fmt: skip
    print(f"{row['kernel']:16s} {row['dtype']:9s} {name:16s} {ms:8.3f} ms  {row['speedup']:5.2f}x  err {err:.1e}  "
          f"{status}", flush=True)
    return row


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
    parser.add_argument("--channels", type=int, default=128, help="the conv block's channels")
    parser.add_argument("--only", choices=("conv", "segment"), default=None, help="one of the two sweeps")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("tune_gpu_kernels.py needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}; "
          f"T = {args.tokens}, conv channels {args.channels}", flush=True)
    rows = []  # conv first: the main target, if the suite's budget cuts the sweep
    if args.only != "segment":
        rows += sweep_conv(args.tokens, args.quick, args.channels)
    if args.only != "conv":
        rows += sweep_segment(args.tokens, args.quick)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tune.json").write_text(json.dumps({"device": torch.cuda.get_device_name(0), "tokens": args.tokens,
                                                        "channels": args.channels, "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
