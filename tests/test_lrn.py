"""bench.models.lrn's native, fused and traced paths, and how it picks a path.

The native kernels (C, built in about a second) run here for real, against torch's
LRN in float64. An inductor compile takes tens of seconds, so the fused path's
real kernels run only with BENCH_INDUCTOR_TESTS=1 (nox -s tests sets it); the
other fused tests run the same math uncompiled in place of the compiled passes,
or traced by torch.compile's eager backend. The eager path's own tests are in
tests/test_models.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench.models import lrn, lrn_native
from bench.models.lrn import FUSED_MIN_NUMEL, LocalResponseNorm, fused_unavailable_reason, local_response_norm

REPO = Path(__file__).resolve().parents[1]

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
def no_native(monkeypatch):
    """The native kernels out of the way, so that float32 CPU tensors take the fused path."""
    monkeypatch.setattr(lrn_native, "supports", lambda x: False)


@pytest.fixture
def uncompiled_fused(monkeypatch, no_native):
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


def test_a_compile_that_fails_falls_back_to_the_same_math_unfused(monkeypatch, caplog, no_native):
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


def test_a_python_dispatch_mode_runs_eager_and_leaves_the_fused_path_alone(monkeypatch, no_native):
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
def test_compiled_kernels_match_torch_forward_and_backward(constants, no_native):
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


# --- the native kernels (C, float32 on the CPU) ----------------------------------------

NATIVE_CONSTANTS = {
    "paper": (5, 1e-3, 0.75, 2.0),
    "even-window": (4, 1e-3, 0.6, 1.5),  # before != after: a transposed backward window shows
    "even-window-beta-3/4": (4, 1e-3, 0.75, 1.5),  # the same in the vector code, which takes beta 3/4
    "window-of-one": (1, 0.1, 0.75, 1.0),
    "study-alpha": (5, 0.4, 0.75, 2.0),  # the denominator mostly data
    "wide-window": (21, 1e-3, 0.75, 2.0),  # the vector code's window, not unrolled
    "wider-than-its-reach": (41, 1e-3, 0.75, 2.0),  # 20 either side: the block code
}
# Both layouts. 4 x 11 x 12 rows of 12 channels are 3 blocks of 170 rows and a partial one;
# 3 channels are fewer than the window; 2,500 channels are more than a block; 3-D inputs too.
# 3 x 7 x 13 rows of 12: 3,276 floats, chunks of 1,024 that end mid-row and a partial last vector.
NATIVE_INPUTS = {
    "nchw": ((4, 12, 11, 12), "planes"),
    "channels_last": ((4, 12, 11, 12), "rows"),
    "3-channels-channels_last": ((2, 3, 6, 6), "rows"),
    "2500-channels-channels_last": ((2, 2500, 1, 2), "rows"),
    "300-channels-nchw": ((2, 300, 3, 5), "planes"),
    "300-planes-of-300-nchw": ((1, 300, 15, 20), "planes"),  # the backward's blocks: 208 positions, then 92
    "3d-channels-innermost": ((5, 7, 9), "rows"),
    "odd-length-channels_last": ((3, 12, 7, 13), "rows"),
}


@pytest.fixture
def native():
    """Skips only where there is no C compiler: a build that fails (its source broken) fails."""
    reason = lrn_native.unavailable_reason()
    if reason is not None and reason.startswith("no C compiler"):
        pytest.skip(f"the native LRN kernels cannot be built here: {reason}")
    assert reason is None, reason


def in_layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    return x.movedim(1, -1).contiguous().movedim(-1, 1) if kind == "rows" else x.contiguous()


@pytest.mark.parametrize("constants", NATIVE_CONSTANTS.values(), ids=NATIVE_CONSTANTS)
@pytest.mark.parametrize("case", NATIVE_INPUTS.values(), ids=NATIVE_INPUTS)
def test_native_kernels_match_torch_forward_and_backward(native, constants, case):
    shape, kind = case
    torch.manual_seed(0)
    x = in_layout(torch.relu(torch.randn(shape) * 3), kind).requires_grad_()
    g = torch.randn(shape)  # contiguous: a `rows` input gets its gradient in the other layout
    assert lrn_native.layout(x) == kind and lrn._mode(x, None) == "native"
    ours = local_response_norm(x, *constants)
    x64 = x.detach().double().requires_grad_()
    theirs = torch_lrn(*constants)(x64)
    assert ours.dtype == torch.float32 and ours.stride() == x.stride()  # the input's memory format kept
    torch.testing.assert_close(ours.double(), theirs, rtol=0, atol=1e-5)
    (g_ours,), (g_theirs,) = torch.autograd.grad(ours, x, g), torch.autograd.grad(theirs, x64, g.double())
    assert g_ours.stride() == x.stride()
    torch.testing.assert_close(g_ours.double(), g_theirs, rtol=0, atol=1e-5)


def matches_torch(constants, shape, kind):
    torch.manual_seed(0)
    x = in_layout(torch.relu(torch.randn(shape) * 3), kind).requires_grad_()
    g = torch.randn(shape)
    ours = local_response_norm(x, *constants)
    x64 = x.detach().double().requires_grad_()
    theirs = torch_lrn(*constants)(x64)
    torch.testing.assert_close(ours.double(), theirs, rtol=0, atol=1e-5)
    (g_ours,), (g_theirs,) = torch.autograd.grad(ours, x, g), torch.autograd.grad(theirs, x64, g.double())
    torch.testing.assert_close(g_ours.double(), g_theirs, rtol=0, atol=1e-5)


# Builds for the code paths this CPU does not take by default: AVX2 without AVX-512, and plain C.
VECTOR_CODE = {"avx2": (("-mno-avx512f",), {"avx2", "fma"}), "plain": (("-mno-avx",), set())}


@pytest.mark.parametrize("variant", VECTOR_CODE)
def test_each_vector_code_matches_torch(native, fresh_build, tmp_path, variant):
    flags, needs = VECTOR_CODE[variant]
    fresh_build.setenv("BENCH_KERNELS", str(tmp_path))
    fresh_build.setattr(lrn_native, "FLAGS", lrn_native.FLAGS + flags)
    cpu = set(lrn_native._cpu_identity().split())
    assert lrn_native.isa() == (variant if needs <= cpu else "plain")
    for constants in NATIVE_CONSTANTS.values():
        for shape, kind in NATIVE_INPUTS.values():
            matches_torch(constants, shape, kind)


def test_native_takes_float32_cpu_tensors_of_every_size_and_nothing_else(native):
    tiny = torch.rand(1, 2, 1, 1)
    assert lrn._mode(tiny, None) == "native"  # no size threshold: building took a second, once
    assert lrn._mode(tiny, True) == "native"
    assert lrn._mode(tiny, False) == "eager"
    assert lrn._mode(tiny.bfloat16(), None) == "eager"  # half precision: small, so eager
    strided = torch.rand(2, 4, 6, 6)[:, :, ::2]  # neither layout
    assert lrn_native.layout(strided) is None and lrn._mode(strided, None) == "eager"


# --- the kernels' cache -------------------------------------------------------------------


def test_the_library_name_follows_the_source_the_compiler_and_the_flags(monkeypatch):
    """An edited kernel, another compiler or another flag is another library: the old one is never loaded for it."""
    source = lrn_native.SOURCE.read_bytes()
    name = lrn_native.library_name(source, "/usr/bin/cc")
    assert name == lrn_native.library_name(source, "/usr/bin/cc")
    assert lrn_native.library_name(source.replace(b"0.5f", b"0.25f", 1), "/usr/bin/cc") != name
    assert lrn_native.library_name(source + b"\n", "/usr/bin/cc") != name
    assert lrn_native.library_name(source, "/usr/bin/clang") != name
    monkeypatch.setattr(lrn_native, "FLAGS", (*lrn_native.FLAGS, "-DLRN_UNROLL=2"))
    assert lrn_native.library_name(source, "/usr/bin/cc") != name


# Run in a process of its own: a library that is loaded unchecked and cut short is a bus error,
# which would end the test run. Fast flags: what is cached is the point, not the code's speed.
CACHE_CASES = r"""
import json, logging, os, shutil, sys
from pathlib import Path
from bench.models import lrn_native

lrn_native.FLAGS = ("-O0", "-fopenmp", "-fPIC", "-shared", "-std=c11")
said = []
logging.getLogger("bench").addHandler(logging.Handler())
logging.getLogger("bench").handlers[-1].emit = lambda record: said.append(record.getMessage())
base = Path(sys.argv[1])


def build(folder, setup=None):
    if setup:
        setup(folder)
    os.environ["BENCH_KERNELS"] = str(folder)
    lrn_native._build.cache_clear()
    said.clear()
    reason = lrn_native.unavailable_reason()
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
    print(json.dumps({"reason": reason, "said": said, "files": files}), flush=True)


def copy_of_fresh(edit):
    def setup(folder):
        shutil.copytree(base / "fresh", folder)
        (library,) = folder.glob("*.so")
        edit(library)
    return setup


build(base / "fresh")
build(base / "cut", copy_of_fresh(lambda so: so.write_bytes(so.read_bytes()[: so.stat().st_size // 2])))
build(base / "random", copy_of_fresh(lambda so: so.write_bytes(os.urandom(so.stat().st_size))))
build(base / "old", copy_of_fresh(lambda so: so.with_name(so.name + ".sha256").unlink()))
build(base / "shared", lambda folder: (folder.mkdir(), folder.chmod(0o777)))
build(base / "a-file", lambda folder: folder.write_text("not a folder"))
"""


def test_the_cache_loads_only_what_was_built_and_only_from_a_private_folder(native, tmp_path):
    """A library cut short or overwritten is built again (checked before it is loaded: loaded cut
    short it was a bus error); one from before checksums is built again; a folder that others can
    write, or that is no folder, is not used, and a warning says so once."""
    done = subprocess.run(
        [sys.executable, "-c", CACHE_CASES, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])  # -7: SIGBUS
    fresh, cut, random, old, shared, a_file = map(json.loads, done.stdout.splitlines())
    assert fresh["reason"] is None and fresh["said"] == []
    library = next(f for f in fresh["files"] if f.endswith(".so"))
    assert fresh["files"] == [library, library + ".sha256"]  # no partial file left
    for case in (cut, random):
        assert case["reason"] is None and case["files"] == fresh["files"], case
        (warning,) = case["said"]
        assert "do not match their checksum; building them again" in warning
    assert old["reason"] is None and old["said"] == [] and old["files"] == fresh["files"]
    for case, why in ((shared, "writable by other users (drwxrwxrwx)"), (a_file, "File exists")):
        assert case["reason"] is None, case
        (warning,) = case["said"]
        assert f"is not usable ({why}); building them in a private temporary folder" in warning, warning
        assert "($BENCH_KERNELS)" in warning
    assert shared["files"] == [] and a_file["files"] is None  # nothing written there
    for case in (fresh, cut, random, old):
        folder = tmp_path / ("fresh", "cut", "random", "old")[[fresh, cut, random, old].index(case)]
        assert lrn_native._sha256(folder / library) == (folder / (library + ".sha256")).read_text().strip()


@pytest.fixture
def fresh_build(monkeypatch):
    """`lrn_native._build` forgotten before and after: the test's own environment decides."""
    lrn_native._build.cache_clear()
    yield monkeypatch
    lrn_native._build.cache_clear()


def test_without_a_compiler_the_native_path_says_why_and_the_lrn_still_runs(fresh_build):
    fresh_build.setenv("CC", "/nowhere/cc")
    assert lrn_native.unavailable_reason() == "no C compiler for the CPU LRN kernels ($CC=/nowhere/cc not found)"
    x = torch.rand(2, 8, 4, 4)
    assert lrn._mode(x, None) == "eager"
    torch.testing.assert_close(local_response_norm(x), torch_lrn(5, 1e-4, 0.75, 2.0)(x), rtol=0, atol=1e-6)


def test_the_built_kernels_are_reused_and_rebuilt_for_another_cpu(native, fresh_build, tmp_path):
    fresh_build.setenv("BENCH_KERNELS", str(tmp_path / "kernels"))
    builds = []
    compile_for_real = lrn_native._compile
    fresh_build.setattr(lrn_native, "_compile", lambda *a: builds.append(a[-1]) or compile_for_real(*a))
    assert lrn_native.unavailable_reason() is None and len(builds) == 1
    lrn_native._build.cache_clear()  # a new process, the same machine: loaded, not built
    assert lrn_native.unavailable_reason() is None and len(builds) == 1
    lrn_native._build.cache_clear()
    fresh_build.setattr(lrn_native, "_cpu_identity", lambda: "flags: sse2")  # -march=native means another binary
    assert lrn_native.unavailable_reason() is None and len(builds) == 2 and builds[0] != builds[1]
    kept = sorted(p.name for p in (tmp_path / "kernels").iterdir())
    # each with its checksum beside it, and no leftovers
    assert kept == sorted(n for p in builds for n in (p.name, p.name + ".sha256"))


def test_an_unwritable_kernel_cache_builds_for_this_process_only(native, fresh_build, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    fresh_build.setenv("BENCH_KERNELS", str(blocker / "kernels"))  # a folder that cannot be made
    before = set(Path(tempfile.gettempdir()).glob("bench-kernels-*"))
    assert lrn_native.unavailable_reason() is None
    assert set(Path(tempfile.gettempdir()).glob("bench-kernels-*")) == before  # loaded, and its folder removed
    x = torch.rand(2, 8, 4, 4)
    assert lrn._mode(x, None) == "native"
    torch.testing.assert_close(local_response_norm(x), torch_lrn(5, 1e-4, 0.75, 2.0)(x), rtol=0, atol=1e-6)
