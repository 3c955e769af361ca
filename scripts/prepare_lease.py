"""Build .gpu/, what a GPU lease carries (`carry: [".gpu"]`; scripts/gpu_lease.py's docstring).

    python3 scripts/prepare_lease.py [--data /work/shared/data/cifar10-jpeg.tar.gz]

Run it here, with network, in the checkout that the device tool sends (its working tree travels,
and .gpu/ with it when the call names it in `carry`). It makes, in the git-ignored .gpu/:

    wheels/               the package's needs that the lent machine's image may lack (fvcore and
                          its own: iopath, yacs, termcolor, portalocker, tabulate, PyYAML; tqdm), each
                          at the version installed here; PyYAML also for Python 3.12 (the image's)
    cifar10-jpeg.tar.gz   the data archive, sha256-checked
    repo.git              this checkout's last two commits (HEAD, HEAD~), bare: the lent machine gets
                          the working tree alone, and `gate --against HEAD~` needs the history
    manifest.json         what is in it, and the commit it was made at

The lease installs a wheel only where the image lacks that package (`pip install --no-index
--no-deps`), so the image's own versions stay. Whatever .gpu/ held before is replaced.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / ".gpu"
DATA = Path("/work/shared/data/cifar10-jpeg.tar.gz")
DATA_SHA256 = "793ee862037178fffb81db1f0cef479b7d2c9f4c76f7b1e1487b76d4608e723f"
# Beyond torch, torchvision, pandas, seaborn (matplotlib, pillow, numpy) and pytest-benchmark:
# fvcore (bench/measure/flops.py) and what it needs, and tqdm (progress bars).
WHEELS = ("fvcore", "iopath", "yacs", "termcolor", "portalocker", "tabulate", "PyYAML", "tqdm")
COMPILED = {"PyYAML": "3.12"}  # a binary wheel, also for the Python the lent machine has
CARRY_LIMIT = 64 << 20  # what a call carries, the working tree included


def run(*cmd: str, cwd: Path = REPO) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def pinned(name: str) -> str:
    """`name==version` as installed here, so the lease runs what the tests ran."""
    return f"{name}=={importlib.metadata.version(name)}"


def build_wheels(folder: Path) -> list[str]:
    folder.mkdir(parents=True)
    specs = [pinned(n) for n in WHEELS]
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(folder), *specs)
    for name, python in COMPILED.items():
        platforms = [f"--platform={p}" for p in ("manylinux_2_17_x86_64", "manylinux2014_x86_64")]
        run(
            sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:",
            f"--python-version={python}", "--implementation=cp", *platforms, "-d", str(folder), pinned(name),
        )  # fmt: skip
    return sorted(p.name for p in folder.glob("*.whl"))


def copy_data(src: Path, dst: Path) -> str:
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    if digest != DATA_SHA256:
        raise SystemExit(f"{src}: sha256 {digest}, not the CIFAR-10 JPEG copy's {DATA_SHA256}")
    shutil.copyfile(src, dst)
    return digest


def shallow_history(into: Path) -> str:
    """HEAD and HEAD~ of this checkout as a bare repository; HEAD's commit id."""
    run("git", "init", "--quiet", "--bare", str(into))
    run("git", "fetch", "--quiet", "--depth=2", f"file://{REPO}", "HEAD", cwd=into)
    run("git", "update-ref", "refs/heads/lease", "FETCH_HEAD", cwd=into)
    run("git", "symbolic-ref", "HEAD", "refs/heads/lease", cwd=into)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=into, capture_output=True, text=True).stdout.strip()


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="the CIFAR-10 JPEG archive (default %(default)s)")
    args = p.parse_args(argv)
    shutil.rmtree(GPU, ignore_errors=True)
    GPU.mkdir()
    manifest = {
        "wheels": build_wheels(GPU / "wheels"),
        "data_sha256": copy_data(args.data, GPU / "cifar10-jpeg.tar.gz"),
        "commit": shallow_history(GPU / "repo.git"),
    }
    (GPU / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True).stdout.split(b"\0")
    tree = sum((REPO / f.decode()).stat().st_size for f in tracked if f and (REPO / f.decode()).is_file())
    total = tree + size_of(GPU)
    print(f".gpu/: {size_of(GPU) / 2**20:.1f} MiB; with the tracked files, {total / 2**20:.1f} MiB of the call's 64")
    if total > CARRY_LIMIT:
        raise SystemExit("too large for one call: the device tool refuses more than 64 MiB")
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
