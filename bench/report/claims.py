"""The paper's claims (Krizhevsky, Sutskever, Hinton 2012) that the studies re-measure, as data.

Numbers are quoted from /work/shared/REFERENCES.md. Each claim names the cell of
a study that re-measures it (`factor` = `level`, against the study's baseline)
and how to compare:

* `top1_diff`: `paper_diff` is the paper's change in top-1 error, in percentage
  points, signed as this harness reports it: the `level` cell minus the
  baseline (removing LRN *raises* error by 1.4, so +1.4; adding PCA colour
  lighting to the crop+flip baseline *lowers* it by over 1, so -1.0);
* `speedup`: `paper_diff` is the ratio of epochs to 25% training error,
  tanh / ReLU (Figure 1);
* `overfit`: no number; compared through the train-test gap at the last epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = "Krizhevsky, Sutskever, Hinton (NIPS 2012)"


@dataclass(frozen=True)
class Claim:
    section: str  # of the paper
    subject: str  # what is compared, in this harness's terms
    quote: str  # the paper's own numbers, quoted
    data: str  # the paper's data set
    factor: str  # the study factor that re-measures it
    level: str  # the level compared with the baseline
    kind: str  # top1_diff | speedup | overfit
    paper_diff: float | None = None  # see the module docstring


CLAIMS: tuple[Claim, ...] = (
    Claim("3.1, Figure 1", "ReLU vs tanh: epochs to reach 25% training error, four-layer net",
          "ReLU six times faster", "CIFAR-10", "activation", "tanh", "speedup", 6.0),
    Claim("3.3", "local response normalisation removed",
          "top-1 / top-5 error down 1.4% / 1.2% with LRN", "ImageNet", "norm", "none", "top1_diff", 1.4),
    Claim("3.3", "local response normalisation removed, four-layer CNN",
          "13% test error without normalisation, 11% with", "CIFAR-10", "norm", "none", "top1_diff", 2.0),
    Claim("3.4", "non-overlapping 2x2/2 instead of overlapping 3x3/2 pooling",
          "top-1 / top-5 error down 0.4% / 0.3% with overlapping pooling", "ImageNet",
          "pool", "nonoverlap", "top1_diff", 0.4),
    Claim("3.2", "one tower with half the kernels instead of the two-GPU split",
          "top-1 / top-5 error down 1.7% / 1.2% with two GPUs", "ImageNet",
          "towers", "one-half", "top1_diff", 1.7),
    Claim("4.1", "PCA colour lighting added to crops and mirrors",
          "top-1 error down by over 1%", "ImageNet", "augment", "crop+flip+pca", "top1_diff", -1.0),
    Claim("4.1", "no crops or mirrors",
          "without it, substantial overfitting", "ImageNet", "augment", "none", "overfit"),
    Claim("4.2", "no dropout in the first two FC layers",
          "without it, substantial overfitting; dropout roughly doubles the iterations to converge",
          "ImageNet", "dropout", "0.0", "overfit"),
)


def claims_for(factor: str, level: str, kind: str | None = None) -> list[Claim]:
    """The claims that the `factor` = `level` cell re-measures."""
    return [c for c in CLAIMS if c.factor == factor and c.level == level and (kind is None or c.kind == kind)]
