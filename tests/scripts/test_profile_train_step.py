"""scripts/profile_train_step.py's count of host syncs in ``fit``, without a GPU (CUDA's hooks stubbed)."""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch

from hiertcn.config import Config
from hiertcn.data.splits import TEST, TRAIN, Dataset
from hiertcn_kernels.packing import SessionCSR

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("profile_train_step", ROOT / "scripts" / "profile_train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dataset(n_users=12, sessions=5, length=4, n_items=15):
    rng = np.random.default_rng(0)
    n = n_users * sessions * length
    csr = SessionCSR(
        user_ptr=np.arange(0, n_users * sessions + 1, sessions, dtype=np.int64),
        session_ptr=np.arange(0, n + 1, length, dtype=np.int64),
        item=rng.integers(0, n_items, n), timestamp=np.arange(n, dtype=np.int64) * 60,
        user_ids=np.arange(n_users, dtype=np.int64), item_ids=np.arange(n_items, dtype=np.int64),
    )  # fmt: skip
    role = np.tile([TRAIN] * (sessions - 1) + [TEST], n_users).astype(np.int8)
    return Dataset(csr=csr, role=role)


def test_fit_step_syncs_counts_the_sync_warnings_of_fits_steps_3_to_7(monkeypatch):
    script = _script()
    modes, steps = [], []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def on_step_spy(original):
        def on_step(step):
            steps.append(step)
            if modes == ["warn"]:  # what the sync debug mode would say of a sync in these steps
                warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
            original(step)

        return on_step

    real_fit = script.fit
    monkeypatch.setattr(script, "fit", lambda *args, on_step, **kw: real_fit(*args, on_step=on_step_spy(on_step), **kw))
    config = Config(device="cpu", n_queues=2, sessions_per_lane=2, validate=False)
    where = script.fit_step_syncs(_dataset(), config)
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # fit stopped at its seventh step, not at the epoch's end
    assert modes == ["warn", 0, 0]  # on after step 2, off at step 7 (and again on the way out)
    assert sum(where.values()) == 5 and all("test_profile_train_step.py" in line for line in where)
