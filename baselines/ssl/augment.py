"""Batched on-device augmentations of the contrastive methods (SimCLR, Chen et al. 2020,
appendix A; MoCo v2, Chen et al. 2020, arXiv:2003.04297), in torch, one call per batch.

Per image, in the papers' order (torchvision's ``RandomResizedCrop``, ``ColorJitter`` with
p = 0.8, ``RandomGrayscale`` p = 0.2, ``GaussianBlur`` p = 0.5, ``RandomHorizontalFlip``):

- random resized crop (always): area fraction s ~ U(crop_scale), aspect ratio r with
  log r ~ U(log 3/4, log 4/3), crop width sqrt(s r) and height sqrt(s / r) of the image side,
  up to 10 draws until the crop fits (torchvision's rejection loop, batched: the first
  candidate that fits, the whole image if none does), the crop's position uniform, resized
  back to H x W bilinearly. Crop and flip are ONE ``F.affine_grid`` + ``F.grid_sample`` call
  for the whole batch (a flip is the sign of the x scale; it commutes with the per-pixel
  colour ops and the symmetric blur, so folding it into the crop draws the same
  distribution);
- colour jitter (p = ``jitter_prob``): brightness x b, contrast blended with the image's
  mean grey, saturation blended with its grey image, hue rotated in the YIQ chroma plane,
  each factor drawn per image (b ~ U(1 - brightness, 1 + brightness), ...; hue h ~ U(-hue,
  hue) turns), clamped to [0, 1] after each op as torchvision does. Departure: a fixed order
  (brightness, contrast, saturation, hue) instead of torchvision's random order per image;
  and hue is the YIQ rotation, not an HSV round trip. Saturation, hue and grayscale apply
  only to RGB data;
- random grayscale (p = ``grayscale_prob``, RGB only);
- Gaussian blur (p = ``blur_prob``): sigma ~ U(blur_sigma) per image, a separable
  ``blur_kernel`` x ``blur_kernel`` kernel with reflect padding, all images in one grouped
  (depthwise) convolution whose B * C groups each carry their own kernel.

The module holds no random state: every random choice of an image is a column of its row of
``uniforms`` (N, ``NUM_DRAWS``), U[0, 1) numbers the caller draws per example from the
training batch (:meth:`bench.method.Batch.rand`; :func:`view_draws` for several views), so an
image's views are a function of (run seed, step, its position in the global batch) only:
the same however the global batch is split across ranks or accumulation micro-batches, and a
resumed run draws what an uninterrupted one draws. The columns (``DRAW_COLUMNS``) are fixed
whatever is switched on, so that enabling one operation leaves the others' draws unchanged.

Strengths per data scale (``augment_hparams``), the papers' CIFAR-10 recipe (colour jitter
0.4 / 0.4 / 0.4 / 0.1, as MoCo v2 and SimCLR's strength 0.5) scaled down where images are tiny:

- 8x8 digits (64 pixels): crops of at least half the image (scale (0.5, 1)): a quarter of an
  8x8 digit no longer says which digit it is; no flip (a mirrored 2, 3, 4, 5, 7 or 9 is not a
  digit of its class, and the flip would teach the encoder to ignore that); blur with sigma
  in (0.1, 0.7) pixels and a 3-pixel kernel (sigma 2 would erase the strokes);
- 28x28 MNIST: crop scale (0.3, 1) (the digit fills the central 20x20, so smaller crops lose
  it); no flip; blur sigma (0.1, 1.0), kernel 5;
- 32x32 CIFAR-10: the papers' CIFAR settings: crop scale (0.08, 1), flip on, colour jitter,
  grayscale p = 0.2 and no blur (SimCLR appendix B.9 and MoCo's CIFAR-10 recipe drop blur at
  32x32; ``--set simclr.blur_prob=0.5`` turns it on).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import GenbenchError
from bench.method import DataSpec

#: torchvision's RandomResizedCrop: aspect-ratio range and number of tries until a crop fits
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10
#: luma weights (ITU-R 601), torchvision's rgb_to_grayscale
LUMA = (0.299, 0.587, 0.114)
#: RGB -> YIQ; the hue rotation turns the (I, Q) chroma plane
RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.596, -0.274, -0.322),
    (0.211, -0.523, 0.312),
)


def _columns(*spans: tuple[str, int]) -> dict[str, slice]:
    out, start = {}, 0
    for name, width in spans:
        out[name] = slice(start, start + width)
        start += width
    return out


#: which columns of an image's row of uniforms each random choice reads
DRAW_COLUMNS = _columns(
    ("crop_area", CROP_TRIES),
    ("crop_ratio", CROP_TRIES),
    ("crop_x", 1),
    ("crop_y", 1),
    ("flip", 1),
    ("jitter", 1),
    ("brightness", 1),
    ("contrast", 1),
    ("saturation", 1),
    ("hue", 1),
    ("grayscale", 1),
    ("blur", 1),
    ("blur_sigma", 1),
)
#: U[0, 1) numbers one augmented view of one image reads
NUM_DRAWS = max(column.stop for column in DRAW_COLUMNS.values())


def augment_hparams(spec: DataSpec) -> dict[str, Any]:
    """The augmentation hyper-parameters per data scale (reasons in the module docstring);
    merged into the contrastive methods' ``default_hparams``."""
    if spec.scale == "8x8":
        crop_scale, flip, sigma, kernel, blur_prob = (0.5, 1.0), False, (0.1, 0.7), 3, 0.5
    elif spec.scale == "28x28":
        crop_scale, flip, sigma, kernel, blur_prob = (0.3, 1.0), False, (0.1, 1.0), 5, 0.5
    else:
        crop_scale, flip, sigma, kernel, blur_prob = (0.08, 1.0), True, (0.1, 2.0), 3, 0.0
    return {
        "crop_scale": crop_scale,
        "flip": flip,
        "jitter_prob": 0.8,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.4,
        "hue": 0.1,
        "grayscale_prob": 0.2,
        "blur_prob": blur_prob,
        "blur_sigma": sigma,
        "blur_kernel": kernel,
    }


def view_draws(source: Any, views: int = 2) -> Tensor:
    """The uniforms of ``views`` augmented views of every example of a training batch
    (``source``: a :class:`bench.method.Batch`, or anything with its ``rand``), as rows
    (views B, NUM_DRAWS): all first views, then all second views, ..., matching
    ``torch.cat([x] * views)``. One draw of (B, views, NUM_DRAWS): per example."""
    u = source.rand(views, NUM_DRAWS)  # (B, views, NUM_DRAWS)
    return u.transpose(0, 1).reshape(-1, NUM_DRAWS)


class BatchAugment(nn.Module):
    """(B, C, H, W) in [0, 1] and uniforms (B, NUM_DRAWS) -> one augmented view of each image,
    same shape, a deterministic function of the image and its row of uniforms. For two views
    of a batch, call it once on ``torch.cat([x, x])`` with :func:`view_draws`."""

    def __init__(
        self,
        channels: int,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        flip: bool = True,
        jitter_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        grayscale_prob: float = 0.2,
        blur_prob: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel: int = 3,
    ) -> None:
        super().__init__()
        if blur_kernel < 1 or blur_kernel % 2 != 1:
            raise GenbenchError(f"bad value {blur_kernel} for blur_kernel: expected an odd size")
        for name, pair in (("crop_scale", crop_scale), ("blur_sigma", blur_sigma)):
            if len(pair) != 2 or pair[0] > pair[1]:
                raise GenbenchError(f"bad value {pair!r} for {name}: expected two values lo,hi")
        self.rgb = channels == 3
        self.crop_scale, self.flip = tuple(crop_scale), flip
        self.jitter_prob = jitter_prob
        self.brightness, self.contrast = brightness, contrast
        self.saturation, self.hue = saturation, hue
        self.grayscale_prob = grayscale_prob
        self.blur_prob, self.blur_kernel = blur_prob, blur_kernel
        self.blur_sigma = tuple(blur_sigma)

    def forward(self, x: Tensor, uniforms: Tensor) -> Tensor:
        """x (B, C, H, W), uniforms (B, NUM_DRAWS) in [0, 1) -> (B, C, H, W)."""
        if uniforms.shape != (len(x), NUM_DRAWS):
            raise GenbenchError(
                f"augmentation uniforms must be ({len(x)}, {NUM_DRAWS}), got "
                f"{tuple(uniforms.shape)}"
            )
        u = uniforms.to(x.device, torch.float32)
        x = self.resized_crop_and_flip(x, u)
        if self.jitter_prob > 0:
            x = self.colour_jitter(x, u)
        if self.rgb and self.grayscale_prob > 0:
            gray = grayscale(x).expand_as(x)
            to_gray = _coin(u, "grayscale", self.grayscale_prob)
            x = torch.where(to_gray[:, None, None, None], gray, x)
        if self.blur_prob > 0:
            x = self.gaussian_blur(x, u)
        return x

    def resized_crop_and_flip(self, x: Tensor, u: Tensor) -> Tensor:
        batch = len(x)
        # CROP_TRIES candidates per image; keep the first that fits inside the image
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * u[:, DRAW_COLUMNS["crop_area"]]  # (B, tries)
        log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, DRAW_COLUMNS["crop_ratio"]])
        width, height = (area * ratio).sqrt(), (area / ratio).sqrt()  # fractions of the side
        fits = (width <= 1) & (height <= 1)  # (B, tries)
        first = fits.float().argmax(1, keepdim=True)  # index of the first fitting candidate
        any_fits = fits.any(1)
        ones = torch.ones_like(any_fits, dtype=u.dtype)
        width = torch.where(any_fits, width.gather(1, first)[:, 0], ones)
        height = torch.where(any_fits, height.gather(1, first)[:, 0], ones)
        # the crop's centre in grid coordinates [-1, 1], uniform over the positions that fit
        centre_x = (1 - width) * (2 * _column(u, "crop_x") - 1)
        centre_y = (1 - height) * (2 * _column(u, "crop_y") - 1)
        sign = ones
        if self.flip:
            sign = torch.where(_coin(u, "flip", 0.5), -ones, ones)
        theta = torch.zeros(batch, 2, 3, device=u.device)  # output grid -> input grid
        theta[:, 0, 0], theta[:, 0, 2] = width * sign, centre_x
        theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def colour_jitter(self, x: Tensor, u: Tensor) -> Tensor:
        apply = _coin(u, "jitter", self.jitter_prob)

        def factor(name: str, strength: float) -> Tensor:  # (B, 1, 1, 1), 1 if not jittered
            value = _uniform(u, name, max(0.0, 1 - strength), 1 + strength).to(x.dtype)
            return torch.where(apply, value, torch.ones_like(value))[:, None, None, None]

        x = (x * factor("brightness", self.brightness)).clamp(0, 1)
        contrast = factor("contrast", self.contrast)
        mean = grayscale(x).mean((1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        x = (contrast * x + (1 - contrast) * mean).clamp(0, 1)
        if self.rgb:
            saturation = factor("saturation", self.saturation)
            x = (saturation * x + (1 - saturation) * grayscale(x)).clamp(0, 1)
            turns = _uniform(u, "hue", -self.hue, self.hue).to(x.dtype)
            x = rotate_hue(x, torch.where(apply, turns, torch.zeros_like(turns)))
        return x

    def gaussian_blur(self, x: Tensor, u: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        apply = _coin(u, "blur", self.blur_prob)
        sigma = _uniform(u, "blur_sigma", *self.blur_sigma).to(x.dtype)
        radius = self.blur_kernel // 2
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)  # (B, k)
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (BC, k)
        # every (image, channel) is a group of one grouped convolution with its own kernel
        planes = x.reshape(1, batch * channels, height, width)
        planes = F.pad(planes, (radius, radius, radius, radius), mode="reflect")
        planes = F.conv2d(planes, kernel[:, None, None, :], groups=batch * channels)  # rows
        planes = F.conv2d(planes, kernel[:, None, :, None], groups=batch * channels)  # columns
        blurred = planes.reshape(batch, channels, height, width)
        return torch.where(apply[:, None, None, None], blurred, x)


def _column(u: Tensor, name: str) -> Tensor:
    """(B,) the column of ``u`` (B, NUM_DRAWS) that the random choice ``name`` reads."""
    return u[:, DRAW_COLUMNS[name].start]


def _uniform(u: Tensor, name: str, low: float, high: float) -> Tensor:
    """(B,) U(low, high) from the column ``name``."""
    return low + (high - low) * _column(u, name)


def _coin(u: Tensor, name: str, prob: float) -> Tensor:
    """(B,) booleans, True with probability ``prob``, from the column ``name``."""
    return _column(u, name) < prob


def grayscale(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma (the image itself when C = 1)."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype)
    return (x * weights[None, :, None, None]).sum(1, keepdim=True)


def rotate_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate each RGB image's chroma by ``turns`` (B,) of a full turn in YIQ space."""
    to_yiq = torch.tensor(RGB_TO_YIQ, device=x.device, dtype=x.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    angle = 2 * math.pi * turns[:, None, None]
    cos, sin = torch.cos(angle), torch.sin(angle)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)
