"""The README's model-options table lists exactly the options each model's constructor takes."""

import inspect
import re
from pathlib import Path

from hiertcn.models import MODELS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_model_options_table_matches_the_constructors():
    section = README.read_text().split("### Model options", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        _, model, options, _ = row.split("|")
        (name,) = re.findall(r"`(\w+)`", model)
        documented[name] = set(re.findall(r"`([a-z_]+)`", options))
    assert set(documented) == set(MODELS)
    for name, cls in MODELS.items():
        params = inspect.signature(cls.__init__).parameters
        accepted = {p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY}
        assert documented[name] == accepted, name


def test_python_api_examples_run(tmp_path, monkeypatch):
    # Each python block of the "Python API" section runs as written, on a small log named as in the README.
    import numpy as np
    import pandas as pd

    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 2
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 24)
    ts = np.tile(np.arange(24) * 60 + (np.arange(24) // 6) * 7200, 30)  # four sessions of six per user
    items = (users * 7 + np.tile(np.arange(24), 30) + rng.integers(0, 2, users.size)) % 40
    pd.DataFrame({"user": users, "item": items, "ts": ts}).to_csv(tmp_path / "log.csv", index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HIERTCN_CACHE_DIR", str(tmp_path / "cache"))
    for code in blocks:
        namespace = {}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (the README's own code)
    assert namespace["items"].shape == (2, 10) and (tmp_path / "runs/py/best.pt").is_file()
    assert 0 < namespace["result"].metrics["mrr"] <= 1
