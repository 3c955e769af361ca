"""`python -m bench evaluate`: a run's model on a test split: top-1/top-5 error, per class, confusion matrix.

Writes RUN/evaluate/ (or --out): summary.json, per_class.csv and confusion.png
(rows: true class, columns: predicted, each row in percent of its class). The
data is read as the run read it (its config's source, subsets and image size;
--data names other data with the same classes: all its test split) and normalised with the
checkpoint's statistics, so on the run's own data the top-1/top-5 errors are the
run's final ones: both come from `bench.train.loop.evaluate`.

    python -m bench evaluate results/runs/RUN --data ../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
from pathlib import Path

import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from bench.data import load_data
from bench.errors import UserError
from bench.io import atomic_write, atomic_write_text, check_writable, write_csv
from bench.train.checkpoint import checkpoint_path
from bench.train.dataspec import data_spec
from bench.train.loop import evaluate
from bench.train.step import autocast
from bench.use.model import load_model, top_k

log = logging.getLogger(__name__)

FOLDER = "evaluate"  # inside the run folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT", help="a run folder, or its checkpoint.pt")
    p.add_argument(
        "--data",
        default=None,
        help="cifar10 | PATH to an ImageFolder tree or .tar.gz with the same classes (default: the run's)",
    )
    p.add_argument("--data-root", default=None, help="folder holding cifar-10-batches-py/ (default: the run's)")
    p.add_argument(
        "--test-per-class",
        type=int,
        default=None,
        help="stratified test subset, images per class (default: the run's on its own data, else all)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default %(default)s)")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default RUN/{FOLDER})")


@torch.inference_mode()
def _test_logits(model, data, dtype: str) -> torch.Tensor:
    model.eval()
    out = []
    for x, _ in data.batches("test", 1000):
        with autocast(x.device, dtype):
            out.append(model(x).float())
    return torch.cat(out)


def per_class_table(logits: torch.Tensor, y: torch.Tensor, classes: list[str]) -> tuple[pd.DataFrame, torch.Tensor]:
    """Per-class top-1/top-5 error and most frequent confusion, and the confusion counts (true x predicted)."""
    n = len(classes)
    _, idx = top_k(logits, 5)
    confusion = torch.bincount(y * n + idx[:, 0], minlength=n * n).view(n, n).cpu()
    in_top5 = torch.bincount(y[(idx == y[:, None]).any(1)], minlength=n).cpu()
    images = confusion.sum(1)
    per = images.clamp(min=1).double()  # 100 * 14 / 100 is 14.0; 100 * (1 - 0.86) is not
    off = confusion.clone().fill_diagonal_(-1)
    worst = off.argmax(1)
    confused = off.gather(1, worst[:, None]).squeeze(1).clamp(min=0)
    frame = pd.DataFrame(
        {
            "class": classes,
            "images": images.tolist(),
            "top1_err_pct": (100 * (images - confusion.diagonal()) / per).tolist(),
            "top5_err_pct": (100 * (images - in_top5) / per).tolist(),
            "most_confused_with": [classes[j] if k else None for j, k in zip(worst.tolist(), confused.tolist())],
            "most_confused_pct": (100 * confused / per).tolist(),
        }
    )
    return frame, confusion


def confusion_figure(confusion: torch.Tensor, classes: list[str], title: str):
    pct = (100 * confusion / confusion.sum(1, keepdim=True).clamp(min=1)).numpy()
    n = len(classes)
    side = min(max(4.5, 0.5 * n + 2), 24)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    labels = classes if n <= 60 else False
    with sns.axes_style("white"):
        sns.heatmap(
            pct,
            ax=ax,
            annot=n <= 20,
            fmt=".0f",
            cmap="Blues",
            vmin=0,
            vmax=100,
            square=True,
            xticklabels=labels,
            yticklabels=labels,
            cbar_kws={"label": "% of the true class"},
        )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=11)
    return fig


def evaluate_run(
    path,
    data: str | None = None,
    data_root: str | None = None,
    device: str = "auto",
    out: Path | None = None,
    test_per_class: int | None = None,
) -> dict:
    """Evaluate a run's checkpoint on a test split and write the files; returns the summary."""
    if test_per_class is not None and test_per_class < 1:
        raise UserError(
            f"--test-per-class {test_per_class} is not valid: it must be at least 1 (images per class); "
            f"leave it out for the run's own subset (or all of another --data)"
        )
    # --out is checked before the evaluation, not after it; RUN/evaluate is as good as a --out given.
    out = Path(out) if out is not None else checkpoint_path(path).parent / FOLDER
    check_writable(out, "--out", folder=True)
    ckpt, model, dev = load_model(path, device)
    cfg = ckpt.train_config()
    if data not in (None, cfg.data):  # other data: its whole test split; the run's subsets need not fit it
        # no hold-outs either: only the test split is read, normalised with the checkpoint's statistics
        cfg = cfg.replace(data=data, train_per_class=None, test_per_class=None, val_size=0, train_eval_size=0)
    cfg = cfg.replace(
        data_root=data_root or cfg.data_root,
        test_per_class=cfg.test_per_class if test_per_class is None else test_per_class,
    )
    dataset = load_data(data_spec(cfg))
    if list(dataset.classes) != list(ckpt.classes):
        raise UserError(
            f"the classes of {dataset.provenance['data_source']} ({', '.join(dataset.classes[:5])}, ...) "
            f"are not the checkpoint's ({', '.join(ckpt.classes[:5])}, ...); pass --data with its classes"
        )
    # The model's own normalisation: refitting on another copy of the data would shift its inputs.
    dataset = dataclasses.replace(dataset, normalizer=ckpt.normalizer).to(dev)
    numbers = evaluate(model, dataset, dtype=cfg.dtype)
    frame, confusion = per_class_table(_test_logits(model, dataset, cfg.dtype), dataset.test_y, ckpt.classes)

    source = dataset.provenance["data_source"]
    summary = {
        **numbers,
        "test_images": len(dataset.test_y),
        "classes": len(ckpt.classes),
        "data_source": source,
        "data_path": dataset.provenance.get("data_path"),
        "checkpoint": str(ckpt.path),
        "model": ckpt.model_name,
        "device": dev.type,
        "dtype": cfg.dtype,
        "run_final_test_top1_err_pct": ckpt.metrics.get("final_test_top1_err_pct"),
        "run_final_test_top5_err_pct": ckpt.metrics.get("final_test_top5_err_pct"),
    }
    title = f"{ckpt.model_name} on {source} (test): top-1 error {numbers['test_top1_err_pct']:.2f}%"
    fig = confusion_figure(confusion, ckpt.classes, title)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=150, bbox_inches="tight")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "per_class.csv", frame)
    _write_bytes(out / "confusion.png", png.getvalue())
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    worst = frame.sort_values("top1_err_pct", ascending=False).head(3)
    log.info(
        "%s on %s: test error %.2f%% (top-5 %.2f%%) over %d images (the run ended at %s); "
        "worst classes: %s; wrote %s/{summary.json,per_class.csv,confusion.png}",
        ckpt.model_name,
        source,
        numbers["test_top1_err_pct"],
        numbers["test_top5_err_pct"],
        len(dataset.test_y),
        _pct(summary["run_final_test_top1_err_pct"]),
        ", ".join(f"{c} {e:.1f}%" for c, e in zip(worst["class"], worst["top1_err_pct"])),
        out,
    )
    return summary


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), binary=True)


def run(args: argparse.Namespace) -> int:
    evaluate_run(args.run, args.data, args.data_root, args.device, args.out, args.test_per_class)
    return 0
