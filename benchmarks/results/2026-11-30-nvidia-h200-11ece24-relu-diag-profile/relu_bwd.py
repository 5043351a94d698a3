"""GPU diagnosis of the relu tcn_block backward mismatch (dx ~2% off at T=65536)."""
import os, sys, math, time
os.environ["HIERTCN_BACKEND"] = "triton"
sys.path.insert(0, ".")
import torch
import hiertcn_kernels as hk
from hiertcn_kernels import reference as R
import hiertcn_kernels.triton.conv as TC
sys.path.insert(0, "diag")
import conv_old as OLD
from tests.kernels.test_conv import _sessions, make_args

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

def rel(o, r):
    return float((o.double() - r.double()).norm() / r.double().norm())

def grads(fn, args, dil, off, dy):
    x, w, b = args[:3]
    y = fn(x, w, b, dilation=dil, activation="relu", cu_seqlens=off)
    return [y.detach()] + list(torch.autograd.grad(y, (x, w, b), dy))

def case(t, c, dil, dtype, label_variants):
    off = _sessions(t, 20, "cuda")
    args = make_args("relu", (t,), c, 5, dtype=dtype, device="cuda")
    x, w, b = args[:3]
    dy = torch.randn(t, c, device="cuda").to(dtype)
    xd, wd, bd = (a.detach().double().requires_grad_() for a in (x, w, b))
    yd = R.tcn_block(xd, wd, bd, dilation=dil, activation="relu", cu_seqlens=off)
    ref = [yd.detach()] + list(torch.autograd.grad(yd, (xd, wd, bd), dy.double()))
    for name, setup in label_variants:
        restore = setup()
        try:
            out = grads(hk.tcn_block if name != "old-module" else OLD.tcn_block, args, dil, off, dy)
            print(f"T={t} C={c} dil={dil} {str(dtype)[6:]:9s} {name:22s} " +
                  " ".join(f"{n}={rel(o, r):.2e}" for n, o, r in zip(("y", "dx", "dw", "db"), out, ref)), flush=True)
            if name == "default":
                err = (out[1].double() - ref[1]).norm(dim=1)
                top = err.topk(12).indices.sort().values
                rows = TC._chunk_rows(t, 4 * dil, x.device)
                starts = off[torch.searchsorted(off, top, right=True) - 1]
                ends = off[torch.searchsorted(off, top, right=True)]
                print(f"   chunk_rows={rows}; worst rows: " + ", ".join(
                    f"{int(r)}(in-chunk {int(r) % rows}, pos {int(r - s)}/{int(e - s)}, err {float(err[r]):.2f} vs |ref| {float(ref[1][r].norm()):.2f})"
                    for r, s, e in zip(top.tolist(), starts.tolist(), ends.tolist())), flush=True)
                frac = (err > 1e-3 * ref[1].norm(dim=1).mean()).double().mean().item()
                print(f"   fraction of rows off: {frac:.4f}", flush=True)
        finally:
            restore()

def patch_opts(**kw):
    def setup():
        orig = TC._bwd_opts
        TC._bwd_opts = lambda *a, **k: {**orig(*a, **k), **kw}
        def restore():
            TC._bwd_opts = orig
        return restore
    return setup

def one_chunk():
    orig = TC._chunk_rows
    TC._chunk_rows = lambda t, halo, device: triton_cdiv(t)
    def restore():
        TC._chunk_rows = orig
    return restore

def triton_cdiv(t):
    return ((t + 63) // 64) * 64

nothing = lambda: (lambda: None)
variants = [("default", nothing), ("old-module", nothing), ("num_stages=1", patch_opts(num_stages=1)),
            ("ACT_BLOCK_T=64", patch_opts(ACT_BLOCK_T=64)), ("ACT_BLOCK_T=16", patch_opts(ACT_BLOCK_T=16)),
            ("one chunk", one_chunk), ("num_warps=4", patch_opts(num_warps=4))]
t0 = time.time()
case(65536, 64, 4, torch.float32, variants)
case(2048, 64, 4, torch.float32, variants[:1])
case(8192, 64, 4, torch.float32, variants[:1])
case(65536, 128, 4, torch.bfloat16, variants[:3])
print(f"done in {time.time() - t0:.0f}s")
