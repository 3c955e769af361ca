"""The paper's claims (Krizhevsky, Sutskever, Hinton 2012) that the studies re-measure: the one registry.

Each claim names the study factor that re-measures it and the two levels it compares:
`level` against `reference`, which must be the study's baseline (e.g. factor `norm`,
level `none` against `lrn`); `side` is the sign the paper expects of level − reference.
A study re-measures every claim whose factor it has (and whose level its profile runs);
`models` narrows a claim to the nets it is about. Report code takes factors and levels
from here or from the study's recorded design (`bench.studies.Design`), never as literals.

Numbers are quoted from the paper (sections given per claim) and cuda-convnet's published layer files. What each `kind` compares:

* `top1_diff`: `paper_diff` is the paper's change in top-1 error, in percentage
  points, signed as this harness reports it: the `level` cell minus the
  baseline (removing LRN *raises* error by 1.4, so +1.4; adding PCA colour
  lighting to the crop+flip baseline *lowers* it by over 1, so -1.0);
* `speedup`: `paper_diff` is the ratio of epochs to 25% training error,
  `level` / `reference` (tanh / ReLU, Figure 1); measured as the paired difference
  of ln(epochs), so the ratio is a geometric mean over seeds;
* `overfit`: no number; the gap (test error minus clean training error: the
  training set evaluated without augmentation or dropout, at the last epoch)
  is wider without the regulariser, and positive.

`preconditions`: what must hold in the cells for the claim to show at all (`bench.report.claims`
checks each and reads `not tested` or `early training` where it fails):

* `LRN_ACTIVE`: the claim is about what LRN does, so the reference arm's LRN must normalise (its
  data share at the end of training, recorded per run);
* `FITS_TRAINING_SET`: an overfitting claim needs the arm without the regulariser to fit its
  training set (clean training error at most `claims.FIT_MAX_CLEAN_TRAIN`);
* `TRAINED_OUT`: an accuracy claim needs cells that have stopped improving; where they are still
  improving at the end the row reads `early training`, with the share of `recipe_steps` (the
  reference recipe's SGD steps, where one is known) that the cells ran.

`sensitivity`: a second look at a claim with another reference level (e.g. LRN at another alpha),
judged against that level's cells; re-measured only by a study that runs that level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

PAPER = "Krizhevsky, Sutskever, Hinton (NIPS 2012)"
KINDS = ("top1_diff", "speedup", "overfit")
LRN_ACTIVE, FITS_TRAINING_SET, TRAINED_OUT = "lrn active", "fits its training set", "trained out"
PRECONDITIONS = (LRN_ACTIVE, FITS_TRAINING_SET, TRAINED_OUT)
# cuda-convnet's methodology for the 11% net: ~350 epochs on batches 1-4, ~150 more with batch 5,
# two stages of ~10 epochs at a tenth of the rate (REFERENCES.md), at batch 128: 40,000 images per
# epoch for 350 + 20 epochs, 50,000 for 150, so (350 * 40,000 + 170 * 50,000) / 128 ≈ 176,000 steps.
CUDA_CONVNET_11PCT_STEPS = 176_000
CIFAR_NET = "cifar-conv-local"  # cuda-convnet's layers-conv-local-11pct: the net of the paper's CIFAR-10 LRN claim


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
    reference: str = ""  # the level the paper compares with: the study's baseline must be this
    side: int = 1  # the sign the paper expects of level − baseline
    models: tuple[str, ...] = ()  # the nets that re-measure it (runs.csv cfg_model); () = any
    preconditions: tuple[str, ...] = ()  # what must hold in the cells for the claim to show (PRECONDITIONS)
    recipe_steps: int | None = None  # the reference recipe's SGD steps, where known (early training's share)
    sensitivity: bool = False  # another reference level than the paper's own (see the module docstring)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.subject!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.side not in (1, -1):
            raise ValueError(f"claim {self.subject!r}: side {self.side!r} must be +1 or -1")
        if self.kind == "top1_diff" and (self.paper_diff is None or math.copysign(1, self.paper_diff) != self.side):
            raise ValueError(f"claim {self.subject!r}: paper_diff {self.paper_diff} disagrees with side {self.side}")
        unknown = set(self.preconditions) - set(PRECONDITIONS)
        if unknown:
            raise ValueError(
                f"claim {self.subject!r}: precondition {sorted(unknown)[0]!r} is not one of {PRECONDITIONS}"
            )

    @property
    def paper_effect(self) -> float | None:
        """The paper's effect on the scale the difference is measured: pp of top-1 error, ln of the
        epochs ratio; None for a claim with a sign only (overfitting)."""
        if self.kind == "top1_diff":
            return self.paper_diff
        if self.kind == "speedup":
            return math.log(self.paper_diff)
        return None

    @property
    def paper_number(self) -> str:
        """The paper's number in the units measured here."""
        if self.kind == "top1_diff":
            return f"{self.paper_diff:+.1f} pp top-1 ({self.data})"
        if self.kind == "speedup":
            return f"×{self.paper_diff:g} epochs to 25% train err., tanh / ReLU ({self.data})"
        return f"wider test − train gap without it ({self.data})"


_LRN_REMOVED = Claim(
    "3.3",
    "local response normalisation removed",
    "top-1 / top-5 error down 1.4% / 1.2% with LRN",
    "ImageNet",
    factor="norm",
    level="none",
    kind="top1_diff",
    paper_diff=1.4,
    reference="lrn",
    side=+1,
    models=("alexnet", "alexnet-paper"),
    preconditions=(LRN_ACTIVE, TRAINED_OUT),
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "3.1, Figure 1",
        "ReLU vs tanh: epochs to reach 25% training error, four-layer net",
        "ReLU six times faster",
        "CIFAR-10",
        factor="activation",
        level="tanh",
        kind="speedup",
        paper_diff=6.0,
        reference="relu",
        side=+1,
    ),
    _LRN_REMOVED,
    replace(
        _LRN_REMOVED,
        subject="local response normalisation removed, against LRN at alpha 0.08 (sensitivity)",
        reference="lrn-0.08",
        sensitivity=True,
    ),
    Claim(
        "3.3",
        "local response normalisation removed, the paper's four-layer CIFAR-10 net",
        "13% test error without normalisation, 11% with",
        "CIFAR-10",
        factor="norm",
        level="none",
        kind="top1_diff",
        paper_diff=2.0,
        reference="lrn",
        side=+1,
        models=(CIFAR_NET,),
        preconditions=(LRN_ACTIVE, TRAINED_OUT),
        recipe_steps=CUDA_CONVNET_11PCT_STEPS,
    ),
    Claim(
        "3.4",
        "non-overlapping 2x2/2 instead of overlapping 3x3/2 pooling",
        "top-1 / top-5 error down 0.4% / 0.3% with overlapping pooling",
        "ImageNet",
        factor="pool",
        level="nonoverlap",
        kind="top1_diff",
        paper_diff=0.4,
        reference="overlap",
        side=+1,
        preconditions=(TRAINED_OUT,),
    ),
    Claim(
        "3.4",
        "non-overlapping 2x2/2 instead of overlapping 3x3/2 pooling: overfitting",
        'with overlapping pooling "slightly more difficult to overfit"',
        "ImageNet",
        factor="pool",
        level="nonoverlap",
        kind="overfit",
        preconditions=(FITS_TRAINING_SET,),
        reference="overlap",
        side=+1,
    ),
    Claim(
        "3.2",
        "one tower with half the kernels instead of the two-GPU split",
        "top-1 / top-5 error down 1.7% / 1.2% with two GPUs",
        "ImageNet",
        factor="towers",
        level="one-half",
        kind="top1_diff",
        paper_diff=1.7,
        reference="two",
        side=+1,
        preconditions=(TRAINED_OUT,),
    ),
    Claim(
        "4.1",
        "PCA colour lighting added to crops and mirrors",
        "top-1 error down by over 1%",
        "ImageNet",
        factor="augment",
        level="crop+flip+pca",
        kind="top1_diff",
        paper_diff=-1.0,
        reference="crop+flip",
        side=-1,
        preconditions=(TRAINED_OUT,),
    ),
    Claim(
        "4.1",
        "no crops or mirrors",
        "without it, substantial overfitting",
        "ImageNet",
        factor="augment",
        level="none",
        kind="overfit",
        preconditions=(FITS_TRAINING_SET,),
        reference="crop+flip",
        side=+1,
    ),
    Claim(
        "4.2",
        "no dropout in the first two FC layers",
        "without it, substantial overfitting; dropout roughly doubles the iterations to converge",
        "ImageNet",
        factor="dropout",
        level="0.0",
        kind="overfit",
        preconditions=(FITS_TRAINING_SET,),
        reference="0.5",
        side=+1,
    ),
)
# Figure 1's claim: its factor and levels are the ones the Figure 1 kind of report compares.
SPEEDUP: Claim = next(c for c in CLAIMS if c.kind == "speedup")


def same_level(a, b) -> bool:
    """'0.0' and '0' are the same dropout level; 'lrn' is only 'lrn'."""
    if str(a) == str(b):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def measures(c: Claim, models: set[str] | None) -> bool:
    """Whether a study of `models` re-measures `c`: a claim about one net counts only on that net."""
    return not c.models or models is None or (bool(models) and models <= set(c.models))


def claims_for(factor: str, level: str, kind: str | None = None, models: set[str] | None = None) -> list[Claim]:
    """The claims that the `factor` = `level` cell of a study of `models` (None: any) re-measures."""
    return [
        c
        for c in CLAIMS
        if c.factor == factor
        and same_level(c.level, level)
        and (kind is None or c.kind == kind)
        and measures(c, models)
    ]
