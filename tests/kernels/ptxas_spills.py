"""Register spills of a kernel compiled for sm_90 (no GPU needed), for the compile-only tests' subprocesses."""

import os
import re
import subprocess
import tempfile

import triton

# The ptxas bundled with Triton that reads its PTX version, when present.
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")


def assert_no_spills(kernel, where) -> None:
    """ptxas -v on ``kernel``'s PTX reports 0 bytes of spill stores (skipped without the bundled ptxas)."""
    if not os.path.exists(PTXAS):
        return
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    report = subprocess.run([PTXAS, "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull],
                            capture_output=True, text=True, check=True).stderr
    assert re.search(r"(?<![0-9])0 bytes spill stores", report), (where, report)
