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
