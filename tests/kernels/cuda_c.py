"""nvcc checks of the csrc_bench CUDA C sources (no GPU needed)."""

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc_bench"
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")


def ptx_entries(source: str, tmp_path: Path) -> set[str]:
    """Kernel entry names of ``csrc_bench/<source>`` compiled with ``nvcc -arch=sm_90 -ptx`` (which must succeed)."""
    ptx = tmp_path / Path(source).with_suffix(".ptx").name
    done = subprocess.run(
        ["nvcc", "-arch=sm_90", "-ptx", str(CSRC / source), "-o", str(ptx)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return {line.split()[2].rstrip("(") for line in ptx.read_text().splitlines() if ".entry" in line}
