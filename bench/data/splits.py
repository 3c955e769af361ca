"""Seeded, stratified draws of image indices: the validation hold-out, per-class subsets, the train_eval subset.

Each draw has its own `torch.Generator`, seeded from (data seed, purpose) alone: the indices depend
on the labels and the seed, never on torch's global RNG, the process or the order of other draws.
"""

from __future__ import annotations

import hashlib

import torch

from bench.errors import UserError


def generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for one kind of draw; the same (seed, purpose) gives the same stream everywhere."""
    if purpose == "subset":
        # The plain seed, as before the other draws existed: per-class subsets of
        # runs made then are drawn again exactly.
        return torch.Generator().manual_seed(seed)
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()  # hash() differs per process
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def class_counts(y: torch.Tensor, n_classes: int) -> list[int]:
    return torch.bincount(y.cpu(), minlength=n_classes).tolist()


def proportional(counts: list[int], total: int) -> list[int]:
    """`total` shared over classes in proportion to `counts` (largest remainder, ties to the lower index).

    Stratified: equal per class when the classes are equal and `total` divides evenly.
    Integer arithmetic, so the shares never depend on float rounding.
    """
    n = sum(counts)
    share = [total * c // n for c in counts]
    remainder = [total * c % n for c in counts]
    for i in sorted(range(len(counts)), key=lambda i: (-remainder[i], i))[: total - sum(share)]:
        share[i] += 1
    return share


def take(y: torch.Tensor, quotas: list[int], g: torch.Generator) -> torch.Tensor:
    """Sorted indices of the first quotas[c] images of each class c under one seeded shuffle."""
    order = torch.randperm(len(y), generator=g)
    picked = [order[y[order] == c][:q] for c, q in enumerate(quotas)]
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


def hold_out(y: torch.Tensor, val_size: int, classes: list[str], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices): a stratified, seeded hold-out of `val_size` images of `y`."""
    if val_size < 0:
        raise UserError(f"val_size must be 0 (no validation split) or more, got {val_size}")
    everything = torch.arange(len(y))
    if val_size == 0:
        return everything, everything[:0]
    counts = class_counts(y, len(classes))
    quotas = proportional(counts, val_size)
    full = [c for c, (q, n) in enumerate(zip(quotas, counts)) if q >= n]
    if full:
        c = full[0]
        raise UserError(
            f"val_size {val_size} would hold out all {counts[c]} training images of class "
            f"{classes[c]!r}; pass --val-size {largest_hold_out(counts, val_size)} or less "
            f"(0 for no validation split)"
        )
    val = take(y, quotas, generator(seed, "val"))
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val] = False
    return everything[keep], val


def largest_hold_out(counts: list[int], val_size: int) -> int:
    """The largest hold-out up to `val_size` that leaves every class at least one training image."""
    v = min(val_size, sum(counts) - len(counts))
    while v > 0 and any(q >= n for q, n in zip(proportional(counts, v), counts)):
        v -= 1
    return v


def per_class(
    y: torch.Tensor, n: int | None, classes: list[str], split: str, seed: int, after: str = ""
) -> torch.Tensor | None:
    """Sorted indices of exactly `n` images of every class (None: the whole split), or an error.

    A quietly smaller class would skew the subset, so a short class is an error naming the fix.
    """
    if n is None:
        return None
    if n < 1:
        raise UserError(f"per-class subset must be at least 1, got {n}")
    counts = class_counts(y, len(classes))
    short = min(range(len(counts)), key=counts.__getitem__)
    if counts[short] < n:
        raise UserError(
            f"the {split} split has {counts[short]} images of class {classes[short]!r}{after}, fewer than "
            f"the {n} per class asked for; pass --{split}-per-class {counts[short]} or less"
        )
    return take(y, [n] * len(classes), generator(seed, "subset"))


def sample(y: torch.Tensor, size: int, n_classes: int, seed: int, purpose: str) -> torch.Tensor:
    """Sorted indices of a stratified, seeded sample of `size` images (all of them when `size` is larger)."""
    if size < 0:
        raise UserError(f"{purpose}_size must be 0 or more, got {size}")
    if size >= len(y):
        return torch.arange(len(y))
    return take(y, proportional(class_counts(y, n_classes), size), generator(seed, purpose))


def describe_counts(counts: list[int]) -> int | str:
    """Per-class sizes as one flat value for a results table: the count, or counts joined by '/' when unequal."""
    return counts[0] if counts and len(set(counts)) == 1 else "/".join(map(str, counts))
