"""Sessions: `nox -s tests` (default), `nox -s lint`, `nox -s ablate`, `nox -s figures`, `nox -s bench`,
`nox -s lrn-speed`.

Arguments after `--` pass through, e.g. `nox -s ablate -- --profile smoke`.
"""

import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True  # torch is a multi-GB install: keep the venv


def _install(session: nox.Session, *extras: str) -> None:
    session.install("-e", f".[{','.join(('dev', 'ray', *extras))}]")  # ray: the tests run --executor ray locally


def _has_cuda(session: nox.Session) -> bool:
    """Whether the session's torch sees a CUDA GPU: the child's exit status says, not its output."""
    check = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
    # session.run returns a silent child's output, never its status: run it directly, from the venv.
    return subprocess.run([str(Path(session.bin) / "python"), "-c", check], check=False).returncode == 0


@nox.session
def tests(session: nox.Session) -> None:
    """Run the unit tests on the CPU (no network, no GPU needed), the compiled paths and TensorBoard included."""
    _install(session, "tb")  # tb: the TensorBoard logging tests run instead of skipping
    # The inductor tests build the fused LRN kernels and a compiled training step (tens of seconds
    # on 2 cores the first time); their cache lives beside the venv, so later runs reuse it.
    env = {
        "BENCH_INDUCTOR_TESTS": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(Path(session.virtualenv.location).parent / "inductor-cache"),
    }
    session.run("python", "-m", "pytest", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and format check (configured in pyproject.toml)."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def ablate(session: nox.Session) -> None:
    """Run the studies (ablations/*.toml) and then the report; e.g. -- --profile smoke --data PATH.

    With a CUDA GPU the cells run through Ray, packed onto each GPU as the profile's
    `gpus_per_cell` says (pass --executor local to opt out)."""
    _install(session)
    args = list(session.posargs)
    if _has_cuda(session) and not any(a.startswith("--executor") for a in args):
        args = ["--executor", "ray", *args]
    session.run("python", "-m", "bench", "ablate", *args)


@nox.session
def figures(session: nox.Session) -> None:
    """Redraw every figure and table from the saved results (nothing retrains)."""
    _install(session)
    session.run("python", "-m", "bench", "report", *(session.posargs or ["results"]))


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput regression gate; e.g. -- --against main, -- --save NAME or -- --compare NAME."""
    _install(session)
    session.run("python", "-m", "bench", "gate", *session.posargs)


@nox.session(name="lrn-speed")
def lrn_speed(session: nox.Session) -> None:
    """The fused LRN's speed ratios (>= 6x nn.LocalResponseNorm; AlexNet with LRN <= 1.15x without)."""
    _install(session)
    session.run(
        "python", "-m", "pytest", "tests/benchmarks/test_lrn_speed.py", "-p", "no:cacheprovider", *session.posargs
    )
