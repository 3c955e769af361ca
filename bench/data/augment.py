"""Normalisation and augmentation on whole batches of tensors, on the data's device.

Order per batch: uint8 -> float -> normalise -> crop (zero padding, i.e. the mean)
-> flip -> PCA lighting. Every random draw comes from one `torch.Generator`, so
a seed fixes the whole sequence of batches.

For a model that takes smaller crops of the images (`crop_size`, cuda-convnet's
24x24 of CIFAR-10's 32x32), `crop` is a random crop_size window of the image,
without padding, and without `crop` the centre window is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.errors import UserError

AUGMENTS = ("crop", "flip", "pca")
PREPROCESS = ("standardize", "meanonly")


def parse_augment(spec: str) -> frozenset[str]:
    """`none` or a `+`-joined subset of crop, flip, pca (e.g. `crop+flip+pca`)."""
    if spec in ("", "none"):
        return frozenset()
    parts = spec.split("+")
    bad = [p for p in parts if p not in AUGMENTS]
    if bad:
        raise UserError(
            f"unknown augmentation {bad[0]!r} in {spec!r}; use 'none' or a '+'-joined subset of {', '.join(AUGMENTS)}"
        )
    return frozenset(parts)


@dataclass
class Normalizer:
    """Maps uint8 images to the model's input scale; fitted on the training split only.

    `standardize`: per-channel (x - mean) / std. `meanonly` (the paper's): raw 0-255
    values minus the per-pixel mean image. Also holds the eigenpairs of the 3x3
    covariance of the training pixels' RGB values on the [0, 1] scale, for PCA
    lighting (fitted once per data set, with the normalisation).
    """

    mode: str
    mean: torch.Tensor  # 3x1x1 (standardize) or 3xHxW (meanonly), 0-255 units
    std: torch.Tensor  # 3x1x1, 0-255 units; ones for meanonly
    pca_eigval: torch.Tensor  # 3, variances along the principal axes, [0, 1]^2 units
    pca_eigvec: torch.Tensor  # 3x3, columns are the unit principal axes p_i of RGB

    @classmethod
    def fit(cls, train_x: torch.Tensor, mode: str = "standardize", chunk: int = 4096) -> Normalizer:
        if mode not in PREPROCESS:
            raise UserError(f"unknown preprocessing {mode!r}; choose one of: {', '.join(PREPROCESS)}")
        # One chunked pass of float32 batched matmuls for the channel sums and
        # cross-products (exact enough, accumulated in float64): a second run must
        # start training within seconds, and a float64 copy of CIFAR-10 is 1.2 GB.
        n, c = train_x.shape[:2]
        s1 = torch.zeros(c, dtype=torch.float64)
        s2 = torch.zeros(c, c, dtype=torch.float64)
        image_sum = torch.zeros(train_x.shape[1:], dtype=torch.float64)
        for start in range(0, n, chunk):
            xf = train_x[start : start + chunk].float()
            image_sum += xf.sum(0).double()
            flat = xf.flatten(2)
            s1 += flat.sum((0, 2)).double()
            s2 += torch.einsum("ncp,ndp->ncd", flat, flat).double().sum(0)  # float32 only within an image
        count = n * train_x[0, 0].numel()
        ch_mean = s1 / count
        cov = s2 / count - torch.outer(ch_mean, ch_mean)  # raw 0-255 channel covariance
        if mode == "standardize":
            std = cov.diagonal().sqrt()
            mean = ch_mean.view(c, 1, 1)
        else:
            std = torch.ones(c, dtype=torch.float64)
            mean = image_sum / n
        # The paper's PCA is over "the set of RGB pixel values throughout the training
        # set", whatever the preprocessing: the channel covariance, here on [0, 1].
        eigval, eigvec = torch.linalg.eigh(cov / 255.0**2)
        return cls(mode, mean.float(), std.view(c, 1, 1).float(), eigval.clamp(min=0).float(), eigvec.float())

    def to(self, device) -> Normalizer:
        return Normalizer(self.mode, *(t.to(device) for t in (self.mean, self.std, self.pca_eigval, self.pca_eigvec)))

    def __call__(self, x_u8: torch.Tensor) -> torch.Tensor:
        return (x_u8.float() - self.mean) / self.std

    def describe(self) -> dict:
        return {
            "preprocess": self.mode,
            "norm_mean": self.mean.flatten()[:3].tolist() if self.mode == "standardize" else None,
            "norm_std": self.std.flatten().tolist() if self.mode == "standardize" else None,
        }


def random_window(x: torch.Tensor, height: int, width: int, g: torch.Generator) -> torch.Tensor:
    """Per-image random height x width window of the batch, every position equally likely, by one gather."""
    n, c, h, w = x.shape
    dy = torch.randint(0, h - height + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(0, w - width + 1, (n,), generator=g, device=x.device)
    rows = (dy[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
    return x[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows,
        cols,
    ]


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch back to its own size, by one gather."""
    return random_window(torch.nn.functional.pad(x, (padding,) * 4), *x.shape[-2:], g)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre size x size window of every image (a view); an odd margin leaves the extra pixel after."""
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top : top + size, left : left + size]


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def pca_lighting(x: torch.Tensor, norm: Normalizer, g: torch.Generator, sigma: float = 0.1) -> torch.Tensor:
    """The paper's colour augmentation (section 4.1): add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to every pixel.

    (l_i, p_i) are the eigenpairs of the training pixels' RGB covariance on the [0, 1]
    scale, a_i ~ N(0, sigma) drawn once per image. The shift is made on that scale and
    converted exactly into normalised units: both preprocessings are affine in the
    0-255 value, x_norm = (255 * x01 - mean) / std (std is 1 for meanonly).
    """
    alpha = torch.randn(x.shape[0], 3, generator=g, device=x.device) * sigma
    shift01 = (alpha * norm.pca_eigval) @ norm.pca_eigvec.T  # n x 3, row i is P @ (alpha_i * l)
    shift = shift01 * 255.0 / norm.std.view(1, -1)
    return x + shift[:, :, None, None]


def augment_batch(
    x: torch.Tensor,
    augment: frozenset[str],
    norm: Normalizer,
    g: torch.Generator,
    padding: int = 4,
    crop_size: int | None = None,
) -> torch.Tensor:
    """`crop_size`: cut every image to this side, a random window with `crop`, else the centre."""
    if crop_size is not None:
        x = random_window(x, crop_size, crop_size, g) if "crop" in augment else center_crop(x, crop_size)
    elif "crop" in augment:
        x = random_crop(x, padding, g)
    if "flip" in augment:
        x = random_flip(x, g)
    if "pca" in augment:
        x = pca_lighting(x, norm, g)
    return x
