"""Whether a results folder's cells ran from one clean commit: committed evidence should.

Cells that ran on several commits are comparable only if the training path did not change between
them; a dirty tree ran code that no commit holds. `check` says which, for report.md. It asks the
checkout the report runs in (`git diff` between the recorded commits, over the paths that decide
what a cell computes); where git or a commit is missing it says that it could not check.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

DIRTY = "-dirty"
# What a cell computes: its data, model, training step and loop, and the study files and sweep that
# configure it. A change elsewhere (report, gate, docs) leaves the cells' numbers as they were.
TRAINING_PATH = ("bench/data", "bench/models", "bench/train", "bench/sweep", "bench/studies.py", "ablations")


def check(commits: list[str], repo: Path | None = None) -> str:
    """'' where every cell ran from one clean commit, else one sentence flagging the folder."""
    commits = sorted({c for c in commits if c and c != "unknown"})
    if not commits:
        return "the cells record no commit: which code produced them is unknown"
    dirty = [c for c in commits if c.endswith(DIRTY)]
    clean = sorted({c.removesuffix(DIRTY) for c in commits})
    flags = []
    if dirty:
        flags.append(f"{len(dirty)} of {len(commits)} recorded commit(s) ran from a dirty tree (uncommitted changes)")
    if len(clean) > 1:
        changed = _changed(clean, repo or Path(__file__).resolve().parents[2])
        if changed is None:
            flags.append(
                f"cells span {len(clean)} commits; whether the training path changed between them could not be checked here"
            )
        elif changed:
            shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
            flags.append(f"cells span {len(clean)} commits, and the training path changed between them ({shown})")
        else:
            flags.append(f"cells span {len(clean)} commits with the same training path")
    if not flags:
        return ""
    return "not one clean commit: " + "; ".join(flags) + ". Committed evidence should be re-run from one clean commit."


def _changed(commits: list[str], repo: Path) -> list[str] | None:
    """The training-path files that differ between the first commit and any other, or None if git cannot tell."""
    changed: set[str] = set()
    for other in commits[1:]:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), "diff", "--name-only", commits[0], other, "--", *TRAINING_PATH],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        changed |= set(done.stdout.split())
    return sorted(changed)
