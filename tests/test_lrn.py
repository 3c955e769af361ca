"""bench.models.lrn's fused and traced paths, and how it picks a path, without running a compiler.

A real compile takes seconds to a minute, so the compiled kernels are checked in
tests/benchmarks/test_lrn_speed.py; here the same math runs traced by
torch.compile's eager backend, or uncompiled in place of the compiled passes.
The eager path's own tests are in tests/test_models.py.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.nn as nn

from bench.models import lrn
from bench.models.lrn import FUSED_MIN_NUMEL, LocalResponseNorm, fused_unavailable_reason, local_response_norm

# Odd and even windows, the paper's beta (square roots) and another (log and exp).
CONSTANTS = [(5, 1e-3, 0.75, 2.0), (4, 1e-3, 0.6, 1.5)]


def torch_lrn(size, alpha, beta, k):
    return nn.LocalResponseNorm(size, alpha * size, beta, k)  # torch divides alpha by size


class SmallAlexNet(nn.Module):
    """conv, ReLU, LRN, max-pool, twice, then a linear classifier: AlexNet's pattern at toy size."""

    def __init__(self, norm):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            norm(*CONSTANTS[0]),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 12, 3, padding=1),
            nn.ReLU(),
            norm(*CONSTANTS[1]),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def forward_backward(model, x):
    x = x.clone().requires_grad_()
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *model.parameters()])
    return out, grads


def test_model_with_lrn_compiles_without_a_graph_break_and_matches_torch():
    """fullgraph=True raises at the first graph break; the eager backend runs no compiler."""
    torch.manual_seed(0)
    ours = SmallAlexNet(LocalResponseNorm)
    theirs = SmallAlexNet(torch_lrn)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 16, 16) * 5  # large activations, so that LRN changes them
    out, grads = forward_backward(torch.compile(ours, backend="eager", fullgraph=True), x)
    ref_out, ref_grads = forward_backward(theirs, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_traced_lrn_on_half_inputs_keeps_their_dtype_and_computes_in_float32(dtype):
    torch.manual_seed(0)
    x64 = torch.relu(torch.randn(2, 16, 5, 5, dtype=torch.float64) * 20)
    x = x64.to(dtype).requires_grad_()
    compiled = torch.compile(lambda t: local_response_norm(t, 5, 1e-4, 0.75, 2.0), backend="eager", fullgraph=True)
    out = compiled(x)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert out.dtype == dtype and grad.dtype == dtype
    ref = local_response_norm(x.detach().double(), 5, 1e-4, 0.75, 2.0)
    eps = torch.finfo(dtype).eps
    assert ((out.double() - ref).abs() <= eps * ref.abs() + 1e-6).all()


@pytest.fixture
def uncompiled_fused(monkeypatch):
    """The fused path with its passes left uncompiled, on a machine that appears to have a compiler.

    Yields the list of constants each `_compiled` lookup was made with.
    """
    calls = []

    def passes(*constants):
        calls.append(constants)
        return tuple(
            lambda *t, f=f: f(*t, *constants) for f in (lrn._math_forward, lrn._math_backward_terms, lrn._math_backward)
        )

    monkeypatch.setattr(lrn, "_compiled", passes)
    monkeypatch.setattr(lrn, "_toolchain_missing", lambda device_type: None)
    monkeypatch.setattr(lrn, "_compile_failed", {})
    yield calls


@pytest.mark.parametrize("constants", CONSTANTS)
def test_fused_passes_match_torch(uncompiled_fused, constants):
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 32, 9, 9) * 3).requires_grad_()
    g = torch.randn_like(x)
    ours = LocalResponseNorm(*constants, fused=True)(x)
    theirs = torch_lrn(*constants)(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    (g_ours,), (g_theirs,) = torch.autograd.grad(ours, x, g), torch.autograd.grad(theirs, x, g)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-5)
    assert uncompiled_fused == [constants] * 3  # forward, backward terms, backward


def test_fused_is_chosen_from_the_size_threshold_on(uncompiled_fused):
    small = torch.rand(1, 4, 8, 8, requires_grad=True)
    local_response_norm(small).sum().backward()
    assert uncompiled_fused == []
    large = torch.rand(1, 16, FUSED_MIN_NUMEL // 16 // 64, 64)
    assert large.numel() == FUSED_MIN_NUMEL
    local_response_norm(large)
    assert len(uncompiled_fused) == 1
    local_response_norm(large, fused=False)
    assert len(uncompiled_fused) == 1


def test_a_compile_that_fails_falls_back_to_the_same_math_unfused(monkeypatch, caplog):
    def broken(*constants):
        raise RuntimeError("cc1plus: out of memory")

    monkeypatch.setattr(lrn, "_compiled", broken)
    monkeypatch.setattr(lrn, "_toolchain_missing", lambda device_type: None)
    monkeypatch.setattr(lrn, "_compile_failed", {})
    x = torch.relu(torch.randn(2, 8, 4, 4)).requires_grad_()
    g = torch.randn_like(x)
    with caplog.at_level(logging.WARNING, logger="bench.models.lrn"):
        ours = local_response_norm(x, 5, 1e-3, 0.75, 2.0, fused=True)
    assert "cc1plus: out of memory" in caplog.text
    theirs = torch_lrn(5, 1e-3, 0.75, 2.0)(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g), torch.autograd.grad(theirs, x, g), rtol=0, atol=1e-5)
    assert "cc1plus: out of memory" in fused_unavailable_reason("cpu")
    with pytest.raises(RuntimeError, match="unavailable: building the fused LRN failed"):
        local_response_norm(x, fused=True)


def test_fused_on_a_device_without_a_compiler_backend_is_refused():
    assert "not meta" in fused_unavailable_reason("meta")
    with pytest.raises(RuntimeError, match="fused LRN requested but unavailable"):
        local_response_norm(torch.empty(1, 4, 2, 2, device="meta"), fused=True)


def test_repr_names_the_path_only_when_forced():
    assert "fused" not in repr(LocalResponseNorm())
    assert "fused=False" in repr(LocalResponseNorm(fused=False))


def test_a_python_dispatch_mode_runs_eager_and_leaves_the_fused_path_alone(monkeypatch):
    """torch.compile refuses to run under a TorchDispatchMode (the memory tracker of measure):
    such a call must take the eager path, not record a failed build for the rest of the process."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bench.models import lrn

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(lrn, "FUSED_MIN_NUMEL", 1)
    monkeypatch.setattr(lrn, "fused_unavailable_reason", lambda device: None)
    x = torch.randn(2, 8, 4, 4)
    with Passthrough():
        assert lrn._mode(x, None) == "eager"
    assert lrn._mode(x, None) == "fused"


@pytest.mark.skipif(
    not os.environ.get("BENCH_INDUCTOR_TESTS"),
    reason="inductor compiles C++ with gcc (tens of seconds); set BENCH_INDUCTOR_TESTS=1 (nox -s tests does)",
)
@pytest.mark.skipif(fused_unavailable_reason("cpu") is not None, reason=str(fused_unavailable_reason("cpu")))
@pytest.mark.parametrize("constants", [(5, 1e-3, 0.75, 2.0), (4, 1e-3, 0.6, 1.5)], ids=["paper", "even-window"])
def test_compiled_kernels_match_torch_forward_and_backward(constants):
    """The real inductor kernels, at the smallest size that builds them: forward, and the backward's
    transposed window (an even window makes a transposition visible), against torch's LRN at 1e-5."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 16, 6, 6) * 3).requires_grad_()
    g = torch.randn_like(x)
    ours = local_response_norm(x, *constants, fused=True)
    theirs = torch_lrn(*constants)(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    (g_ours,), (g_theirs,) = torch.autograd.grad(ours, x, g), torch.autograd.grad(theirs, x, g)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-5)
    assert not lrn._compile_failed  # the compiled path ran, not the fallback
