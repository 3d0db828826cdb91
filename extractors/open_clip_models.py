"""``open_clip:ARCH:PRETRAINED_FILE[:mode=image|text|fused]``: an OpenCLIP model.

``ARCH`` is an OpenCLIP architecture name (``ViT-B-32``, ``convnext_base``, ...) or the path of a
model config ``.json`` (registered with ``open_clip.add_model_config``; its stem is the name).
``PRETRAINED_FILE`` is a checkpoint file (loaded by ``open_clip.create_model_and_transforms``),
``random`` for OpenCLIP's own initialisation, or a pretrained tag already in the local hub cache
(offline). Images go through OpenCLIP's eval preprocessing in DataLoader workers; titles
through ``open_clip.get_tokenizer(ARCH)``. ``mode`` as for ``hf:`` (bench/adapters/shared.py).
Options: ``mode``, ``batch_size`` (default 64), ``name`` (the row label).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.adapters.shared import (
    AdapterError,
    TrainableModel,
    batch_size,
    device_option,
    display_name,
    eval_module,
    module_device,
    parse_mode,
    require,
    sha256_file,
)
from bench.core.registry import check_options, extractor

OPTIONS = ("arg", "arg2", "mode", "batch_size", "name", "device")


class VisualTower(torch.nn.Module):
    """Normalised pixels -> OpenCLIP image embedding (``encode_image``), for fine-tuning."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


def architecture(open_clip: Any, arch: str, spec: str) -> str:
    """A known architecture name; a config .json is registered first."""
    if arch.endswith(".json"):
        path = Path(arch).expanduser()
        if not path.is_file():
            raise AdapterError(f"{spec}: no model config at {path}")
        open_clip.add_model_config(path)
        return path.stem
    if arch not in open_clip.list_models():
        raise AdapterError(f"{spec}: unknown OpenCLIP architecture {arch!r} "
                           f"(open_clip.list_models() lists them, or give a config .json)")
    return arch


@extractor("open_clip")
def make_open_clip(options: dict[str, str], profile: Any) -> TrainableModel:
    spec = "open_clip:" + ":".join(options.get(k, "") for k in ("arg", "arg2"))
    check_options(spec, options, OPTIONS)
    if not options.get("arg") or not options.get("arg2"):
        raise AdapterError("open_clip needs an architecture and weights: --extractors "
                           "open_clip:ViT-B-32:/path/to/open_clip_pytorch_model.bin")
    open_clip = require("open_clip", spec, "open_clip_torch")
    mode = parse_mode(options, spec)
    arch = architecture(open_clip, options["arg"], spec)
    weights = options["arg2"]
    config: dict[str, Any] = {"library": "open_clip", "version": open_clip.__version__,
                              "arch": arch}
    if options["arg"].endswith(".json"):
        config["arch_config_sha256"] = sha256_file(Path(options["arg"]).expanduser())
    path = Path(weights).expanduser()
    if weights == "random":
        pretrained, label = None, f"open_clip:{arch}:random"
        config["weights"] = "random"
    elif path.suffix or "/" in weights:
        if not path.is_file():
            raise AdapterError(f"{spec}: weights file {path} does not exist; put the OpenCLIP "
                               f"checkpoint ({arch}) at that path (nothing is downloaded at "
                               f"run time)")
        pretrained, label = str(path), f"open_clip:{arch}:{path.stem}"
        config |= {"weights": str(path.resolve()), "weights_sha256": sha256_file(path)}
    else:
        pretrained, label = weights, f"open_clip:{arch}:{weights}"
        config["pretrained_tag"] = weights
    try:
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    except Exception as error:  # noqa: BLE001 - bad checkpoint, tag not cached, ...
        first = str(error).splitlines()[0][:200] if str(error) else ""
        raise AdapterError(f"{spec}: cannot load {arch} with {weights!r} "
                           f"({type(error).__name__}: {first}); a tag must already be in the "
                           f"local hub cache, a file must be an OpenCLIP checkpoint") from None
    model = eval_module(model)
    tokenizer = open_clip.get_tokenizer(arch)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    side = model.visual.image_size
    side = int(side[-1] if isinstance(side, (tuple, list)) else side)
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))

    def text_features(titles: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(titles).to(module_device(model)))

    tower = VisualTower(model)
    return TrainableModel(display_name(label, options, mode), config, preprocess, tower,
                         image_size=side, mean=mean, std=std, text_features=text_features,
                         mode=mode, backbone=tower, batch_size=batch_size(options, spec),
                         device=device_option(options))
