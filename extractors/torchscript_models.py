"""``torchscript:FILE``: a scripted or traced module that maps images to vectors.

The module is loaded with ``torch.jit.load`` (no Python class needed) and called on float
NCHW batches: each image resized on its shorter side to ``resize`` (default
``image_size / 0.875``), centre-cropped to ``image_size`` (default 224), scaled to [0, 1] and
normalised with ``norm`` (``imagenet`` by default, ``clip``, or ``none``). Its output is flattened
to [n, dim]. A scripted module is not fine-tuned (no ``backbone()``).
Options: ``image_size``, ``resize``, ``norm``, ``batch_size`` (default 64), ``name``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision import transforms

from bench.adapters.shared import (
    AdapterError,
    StreamedModel,
    batch_size,
    device_option,
    display_name,
    positive_int,
    sha256_file,
    weights_file,
)
from bench.core.registry import check_options, extractor
from bench.train.backbones import IMAGENET_MEAN, IMAGENET_STD

OPTIONS = ("arg", "image_size", "resize", "norm", "batch_size", "name", "device")
NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD),
         "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
         "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}


@extractor("torchscript")
def make_torchscript(options: dict[str, str], profile: Any) -> StreamedModel:
    spec = "torchscript:" + options.get("arg", "")
    check_options(spec, options, OPTIONS)
    if not options.get("arg"):
        raise AdapterError("torchscript needs a file: --extractors torchscript:model.pt")
    path = weights_file(options["arg"], spec, "a module saved with torch.jit.save")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - not a TorchScript archive
        first = str(error).splitlines()[0][:200] if str(error) else ""
        raise AdapterError(f"{spec}: {path} is not a TorchScript file saved with torch.jit.save "
                           f"({type(error).__name__}: {first})") from None
    module.eval()
    size = positive_int(options, "image_size", spec, 224)
    resize = positive_int(options, "resize", spec, round(size / 0.875))
    norm = options.get("norm", "imagenet")
    if norm not in NORMS:
        raise AdapterError(f"{spec}: norm={norm!r}; choose from {', '.join(NORMS)}")
    mean, std = NORMS[norm]
    transform = transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(mean, std)])
    config = {"library": "torch.jit", "weights": str(Path(path).resolve()),
              "weights_sha256": sha256_file(path), "image_size": size, "resize": resize,
              "norm": norm}
    return StreamedModel(display_name(f"torchscript:{path.stem}", options), config, transform,
                         module, image_size=size, mean=mean, std=std,
                         batch_size=batch_size(options, spec),
                         device=device_option(options))
