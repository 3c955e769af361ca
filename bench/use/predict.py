"""`python -m bench predict`: the likeliest classes, with probabilities, for image files.

Every image is converted the way the training data was: decoded to RGB, resized
(bilinear) to the training images' size, normalised with the training split's
statistics stored in the checkpoint, and cut to its centre window for a model
trained on crops of them (cifar-conv-local: 24x24 of 32x32). When that changed an
image (colour mode, size), the output says so in one line (`conversion` in --json,
per image too).

    python -m bench predict results/runs/RUN cat.jpg photos/ --topk 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.data.augment import center_crop
from bench.data.sources import IMAGE_SUFFIXES, _decode, describe_conversion
from bench.errors import UserError
from bench.use.model import load_model, top_k

CHUNK = 256  # images decoded and run at once: a folder of any size never sits in memory whole


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT", help="a run folder, or its checkpoint.pt")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders searched for images")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout instead of text")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default %(default)s)")


def image_files(paths: list[str]) -> list[Path]:
    """The files named, and the images inside the folders named (recursively, sorted)."""
    files = []
    for name in paths:
        path = Path(name).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise UserError(f"no images in folder {path} (looked for {', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"image {path} does not exist")
    return files


@torch.inference_mode()
def predict(path, images: list[str], k: int = 5, device: str = "auto") -> dict:
    """Top-`k` classes per image: a dict ready for JSON (see `format_text` for people)."""
    if k < 1:
        raise UserError(f"--topk must be at least 1, got {k}")
    files = image_files(images)
    ckpt, model, dev = load_model(path, device)
    norm, size = ckpt.normalizer.to(dev), ckpt.input_size
    rows, modes, sizes = [], {}, {}
    for start in range(0, len(files), CHUNK):
        chunk = files[start : start + CHUNK]
        decoded = [_decode(f.read_bytes(), str(f), size) for f in chunk]
        x = norm(torch.stack([d.image for d in decoded]).to(dev))
        if model.input_size < size:  # trained on crops of the images: evaluated on the centre one
            x = center_crop(x, model.input_size)
        probs, idx = top_k(model(x), k)
        for f, d, p, i in zip(chunk, decoded, probs.tolist(), idx.tolist()):
            modes[d.mode] = modes.get(d.mode, 0) + 1
            sizes[d.size] = sizes.get(d.size, 0) + 1
            rows.append(
                {
                    "image": str(f),
                    "mode": d.mode,
                    "size": list(d.size),
                    "conversion": describe_conversion({d.mode: 1}, {d.size: 1}, size),
                    "top": [{"class": ckpt.classes[c], "probability": q} for q, c in zip(p, i)],
                }
            )
    resized = {s: n for s, n in sizes.items() if s != (size, size)} or {(size, size): 1}  # name only the changed
    return {
        "checkpoint": str(ckpt.path),
        "model": ckpt.model_name,
        "input_size": size,
        "preprocess": ckpt.normalizer.mode,
        "classes": len(ckpt.classes),
        "conversion": describe_conversion(modes, resized, size),
        "predictions": rows,
    }


def format_text(result: dict) -> str:
    lines = []
    if result["conversion"]:
        lines.append(f"converted as the training data was: {result['conversion']}")
    for row in result["predictions"]:
        top = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in row["top"])
        lines.append(f"{row['image']}: {top}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = predict(args.checkpoint, args.images, args.topk, args.device)
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return 0
