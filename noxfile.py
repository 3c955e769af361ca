"""Sessions: `nox -s tests` (default), `nox -s ablate`, `nox -s figures`, `nox -s bench`.

Arguments after `--` pass through, e.g. `nox -s ablate -- --profile smoke`.
"""

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True  # torch is a multi-GB install


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the unit tests on the CPU (no network, no GPU needed)."""
    _install(session)
    session.run("python", "-m", "pytest", *session.posargs)
