"""Batched image augmentations for every training in the suite: per-image random parameters,
tensors on the training device, one ``augment(x, spec, generator)``.

Per-image PIL transforms cost more than the small-image forward pass itself on 2 CPU cores, and
torchvision's v2 transforms draw one set of parameters per call, not per image. ``ViewSpec``
views mirror lightly's ``MoCoV2Transform``/``SwaVTransform`` (random resized crop, flip, colour
jitter, grayscale, optional Gaussian blur, ImageNet normalisation; ``lightly_view`` reads the
defaults from lightly's own transform signatures) for the self-supervised and supervised
pretraining and ``m6_moe``; ``CropFlip`` is fine-tuning's flip and padded random crop.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.train.backbones import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class ViewSpec:
    """One augmented view: output ``size`` and lightly-style augmentation strengths."""

    size: int
    min_scale: float = 0.2
    max_scale: float = 1.0
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    cj_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray: float = 0.2
    blur: float = 0.0
    sigmas: tuple[float, float] = (0.1, 2.0)


def lightly_view(transform: type, size: int, crop: int = 0, cj_strength: float | None = None,
                 **overrides: Any) -> ViewSpec:
    """A ``ViewSpec`` with the defaults of a lightly transform class (``MoCoV2Transform``,
    ``SwaVTransform``); ``crop`` picks the crop group of multi-crop transforms and
    ``cj_strength`` scales the colour jitter as lightly's argument of that name does."""
    d = {k: p.default for k, p in inspect.signature(transform).parameters.items()}
    strength = d.get("cj_strength", 1.0) if cj_strength is None else cj_strength
    min_scale = d["crop_min_scales"][crop] if "crop_min_scales" in d else d["min_scale"]
    max_scale = d["crop_max_scales"][crop] if "crop_max_scales" in d else 1.0
    spec = dict(size=size, min_scale=min_scale, max_scale=max_scale, hflip=d["hf_prob"],
                cj_prob=d["cj_prob"], brightness=d["cj_bright"] * strength,
                contrast=d["cj_contrast"] * strength, saturation=d["cj_sat"] * strength,
                hue=d["cj_hue"] * strength, gray=d["random_gray_scale"],
                blur=d["gaussian_blur"], sigmas=tuple(d["sigmas"]))
    spec.update(overrides)
    return ViewSpec(**spec)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] (once per batch, shared by all views)."""
    return images.permute(0, 3, 1, 2).contiguous().float().div_(255.0)  # NCHW, see backbones


@dataclass(frozen=True)
class CropFlip:
    """Fine-tuning's view: a horizontal flip and a random crop of the same size after reflect
    padding by ``padding`` of the side, on an already normalised tensor."""

    padding: float = 0.125


def augment(x: torch.Tensor, spec: ViewSpec | CropFlip, g: torch.Generator) -> torch.Tensor:
    """One random view of every image of ``x`` with per-image parameters drawn from ``g``.

    ``ViewSpec``: ``x`` is float NCHW in [0, 1] (``to_unit``), the view is ImageNet-normalised.
    ``CropFlip``: ``x`` is a normalised batch already (fine-tuning feeds the extractor's own
    preprocessing), ``g`` a CPU generator; the view keeps its normalisation."""
    if isinstance(spec, CropFlip):
        return _crop_flip(x, spec.padding, g)
    x = _resized_crop_flip(x, spec, g)
    if spec.cj_prob > 0:
        x = _color_jitter(x, spec, g)
    if spec.gray > 0:
        gray = _luma(x).expand_as(x)
        x = torch.where(_coin(x, spec.gray, g).view(-1, 1, 1, 1), gray, x)
    if spec.blur > 0:
        x = _gaussian_blur(x, spec, g)
    return normalize(x)


def normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _uniform(x: torch.Tensor, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape[0], device=x.device, generator=g) * (high - low) + low


def _coin(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape[0], device=x.device, generator=g) < p


def _luma(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _resized_crop_flip(x: torch.Tensor, spec: ViewSpec, g: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop (area share in [min_scale, max_scale], aspect ratio in ``ratio``; a
    side that would leave the image is clipped) and a horizontal flip, as one bilinear affine
    resampling per image."""
    area = _uniform(x, spec.min_scale, spec.max_scale, g)
    ratio = torch.exp(_uniform(x, math.log(spec.ratio[0]), math.log(spec.ratio[1]), g))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * _uniform(x, -1.0, 1.0, g)
    cy = (1 - h) * _uniform(x, -1.0, 1.0, g)
    flip = torch.where(_coin(x, spec.hflip, g), -1.0, 1.0)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, [x.shape[0], 3, spec.size, spec.size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _color_jitter(x: torch.Tensor, spec: ViewSpec, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation, hue with per-image factors, on a ``cj_prob`` share of
    the images. Fixed order (torchvision shuffles it); hue is a rotation in YIQ space, a cheap
    linear stand-in for torchvision's HSV shift."""
    on = _coin(x, spec.cj_prob, g).float()
    n = x.shape[0]

    def factor(strength: float, centre: float = 1.0) -> torch.Tensor:
        value = _uniform(x, centre - strength, centre + strength, g)
        return (on * value + (1 - on) * centre).view(n, 1, 1, 1)

    x = (x * factor(spec.brightness)).clamp_(0, 1)
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(spec.contrast) + mean).clamp_(0, 1)
    gray = _luma(x)
    x = ((x - gray) * factor(spec.saturation) + gray).clamp_(0, 1)
    if spec.hue > 0:
        angle = factor(spec.hue, 0.0).view(n) * 2 * math.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(n, 3, 3, device=x.device)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        yiq = _YIQ.to(x.device)
        matrix = torch.linalg.inv(yiq) @ rot @ yiq
        x = torch.einsum("nij,njhw->nihw", matrix, x).clamp_(0, 1)
    return x


def _gaussian_blur(x: torch.Tensor, spec: ViewSpec, g: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur, sigma drawn per image, applied to a ``blur`` share of images."""
    n, c, height, width = x.shape
    sigma = _uniform(x, *spec.sigmas, g)
    sigma = torch.where(_coin(x, spec.blur, g), sigma, torch.full_like(sigma, 1e-3))
    radius = max(1, min(int(math.ceil(2 * spec.sigmas[1])), min(height, width) // 2 - 1))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, k]
    flat = x.reshape(1, n * c, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, height, width)


def _crop_flip(x: torch.Tensor, padding: float, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random crop (reflect padding, same size), per sample; the
    parameters are drawn on the CPU generator, so they are the same on any device."""
    n, _, h, w = x.shape
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = min(int(round(padding * min(h, w))), h - 1, w - 1)
    if pad <= 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect").permute(0, 2, 3, 1)
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=generator).to(x.device)
    rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
