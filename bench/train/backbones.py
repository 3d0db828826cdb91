"""Backbone factory, the mixed-precision context and the one batched embedding function
(``embed_images``) shared by the image extractors, their training and fine-tuning.

torchvision ResNets with a width option and, for 32-64 px input, a small-image stem (3x3 conv,
stride 1, no max-pool, as in CIFAR ResNets), so CPU profiles stay fast. ``fc`` is replaced by
``Identity``: the backbone maps images to pooled features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3])}


STEMS = ("small", "strided", "imagenet")
"""``small``: 3x3 conv, stride 1, no max-pool (CIFAR ResNets; full resolution in layer1);
``strided``: 3x3 conv, stride 2, no max-pool (a quarter of ``small``'s cost, for CPU budgets);
``imagenet``: torchvision's 7x7 stride-2 conv and max-pool (needed for torchvision weights)."""


class ScaledResNet(ResNet):
    """torchvision's ResNet with every stage's channels scaled by ``width / 64``."""

    def __init__(self, arch: str = "resnet18", width: int = 64, small_images: bool = True,
                 stem: str | None = None):
        block, layers = ARCHS[arch]
        self._width = width
        self._first_layer = True
        super().__init__(block, layers)
        self.stem = stem or ("small" if small_images else "imagenet")
        if self.stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            stride = 1 if self.stem == "small" else 2
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=stride, padding=1, bias=False)
            self.maxpool = nn.Identity()
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(width)
        self.fc = nn.Identity()
        self.feature_dim = 8 * width * block.expansion

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):  # noqa: D401
        if self._first_layer:
            self.inplanes = self._width
            self._first_layer = False
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)


def build_backbone(arch: str = "resnet18", width: int = 64, small_images: bool = True,
                   seed: int | None = None, stem: str | None = None) -> ScaledResNet:
    """A ResNet mapping images to pooled features; ``stem`` (see ``STEMS``) overrides
    ``small_images`` (True: ``small``, False: ``imagenet``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; choose from {', '.join(ARCHS)}")
    if stem is not None and stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose from {', '.join(STEMS)}")
    if seed is not None:
        torch.manual_seed(seed)
    return ScaledResNet(arch, width, small_images, stem)


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def images_to_tensor(images: np.ndarray, size: int | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW at ``size`` (bilinear resize when it differs)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    # contiguous NCHW: torch 2.13's CPU conv backward corrupts the heap on channels-last
    # input with few channels (a ResNet of width 4), so the permuted view is never passed on
    x = x.permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def amp_context(device: torch.device | str,
                precision: str | None = None) -> contextlib.AbstractContextManager:
    """The suite's one mixed-precision context. ``precision`` (resolved by
    ``bench.train.precision.resolve_precision``: fp32, bf16, fp16) is what training asks
    for; None, what embedding uses: bf16 autocast on CUDA (fp16 where bf16 is missing),
    nothing (fp32) on the CPU, so vectors keep full precision for the neighbour searches."""
    if precision is not None:
        from bench.train.precision import autocast

        return autocast(device, precision)
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def embed_images(model: nn.Module, image_batches: Iterable[np.ndarray], size: int | None,
                 device: torch.device | str = "cpu",
                 to_tensor: Callable[[np.ndarray], torch.Tensor] | None = None) -> np.ndarray:
    """The suite's one embedding function: ``model`` in eval mode, no gradient, under
    ``amp_context``, over uint8 NHWC image batches (``to_tensor``: the extractor's own
    preprocessing, else ``images_to_tensor`` at ``size``); float32 [n, d], flattened. The
    training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with amp_context(device):
            for images in image_batches:
                x = (images_to_tensor(images, size, device) if to_tensor is None
                     else to_tensor(images).to(device))
                outputs.append(model(x).float().flatten(1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outputs).astype(np.float32, copy=False)


def batched_images(dataset, rows: np.ndarray, batch_size: int):
    """Yield the dataset's uint8 images for ``rows`` in batches (a few batches in memory):
    slices of an in-memory dataset, or files decoded in DataLoader workers (``folder``)."""
    from bench.embed.streaming import uint8_batches

    yield from uint8_batches(dataset, rows, batch_size)
