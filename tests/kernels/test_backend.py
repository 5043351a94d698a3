"""Backend choice: a Triton that cannot run CPU tensors gets a clear error, not a crash inside Triton."""

import os
import subprocess
import sys
import textwrap

import pytest

# TRITON_INTERPRET=1 set only after triton was imported (``import torch._dynamo`` imports it): Triton's
# standard library is then compiled-mode and the interpreter cannot call it.
LATE_INTERPRETER = textwrap.dedent(
    """
    import os
    import torch
    import triton
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["HIERTCN_BACKEND"] = "triton"
    import hiertcn_kernels as hk
    x, w, off = torch.randn(6, 4), torch.randn(4, 4, 3), torch.tensor([0, 2, 6])
    for name, op in [("conv", lambda: hk.causal_conv1d(x, w, cu_seqlens=off)),
                     ("reduce", lambda: hk.segment_reduce(x, off, "max"))]:
        try:
            op()
            print(name, "ran")
        except RuntimeError as e:
            print(name, type(e).__name__, e)
    """
)


def test_interpreter_set_after_triton_was_imported_is_a_clear_error():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "HIERTCN_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run([sys.executable, "-c", LATE_INTERPRETER], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["conv", "RuntimeError"], ["reduce", "RuntimeError"]], lines
    for line in lines:
        assert "set TRITON_INTERPRET=1 before triton is first imported" in line
        assert "it was set after triton had been imported" in line
