"""HierTCN trains to the same loss on the Triton kernels as on the PyTorch reference (CPU: Triton interpreter)."""

import importlib.util

import pytest
import torch
from tinylogs import make_csr

from hiertcn.batching import user_batches
from hiertcn.losses import build_loss
from hiertcn.models import build_model

pytestmark = pytest.mark.interpreter


def _require_kernels():
    missing = [m for m in ("conv", "segment") if importlib.util.find_spec(f"hiertcn_kernels.triton.{m}") is None]
    if missing:
        pytest.skip(f"Triton kernel module(s) not landed yet: {', '.join('hiertcn_kernels.triton.' + m for m in missing)}")


def _loss_and_grads(block, backend, monkeypatch):
    monkeypatch.setenv("HIERTCN_BACKEND", backend)
    torch.manual_seed(0)
    model = build_model("hiertcn", n_items=13, embedding_dim=8, hidden_dim=6, channels=8, levels=2, block=block)
    csr = make_csr([[3, 7], [2, 5, 4]], n_items=13, seed=5)
    (batch,) = list(user_batches(csr, max_session_len=5))
    user_emb, _ = model(batch)
    loss = build_loss("softmax")(model, user_emb, batch.items)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("block", ["relu", "gated"])
@pytest.mark.interpreter
def test_triton_and_reference_give_the_same_training_loss(block, monkeypatch):
    _require_kernels()
    ref_loss, ref_grads = _loss_and_grads(block, "reference", monkeypatch)
    tri_loss, tri_grads = _loss_and_grads(block, "triton", monkeypatch)
    torch.testing.assert_close(tri_loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, g in ref_grads.items():
        err = (tri_grads[name] - g).norm() / g.norm().clamp(min=1e-12)
        assert err < 1e-4, f"gradient of {name}: relative error {err:.2e}"
