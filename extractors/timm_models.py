"""``timm:NAME[:weights=FILE|random]``: a timm model without its head, with timm's preprocessing.

The model comes from ``timm.create_model(NAME, num_classes=0)`` (pooled features), its input
size, resize, crop and normalisation from ``timm.data.resolve_model_data_config`` and
``timm.data.create_transform`` (eval mode). Weights:

- ``weights=FILE``: a state dict saved with ``torch.save`` or a ``.safetensors`` file, loaded
  with ``timm.models.load_checkpoint`` (a classifier in the file is dropped; any other
  mismatch is refused with the keys);
- no ``weights``: timm's pretrained weights from the local Hugging Face hub cache (offline);
- ``weights=random``: timm's own initialisation, seeded (``seed=``, default 0).

Options: ``weights``, ``seed``, ``batch_size`` (default 64), ``name`` (the row label).
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
    require,
    sha256_file,
    unreadable_weights,
    weights_file,
)
from bench.core.registry import check_options, extractor

OPTIONS = ("arg", "weights", "seed", "batch_size", "name", "device")


def load_weights(timm: Any, model: torch.nn.Module, path: Path, spec: str) -> None:
    """timm's own checkpoint loader; only the classifier may be left out."""
    classifier = model.default_cfg.get("classifier") if hasattr(model, "default_cfg") else None
    try:
        incompatible = timm.models.load_checkpoint(model, str(path), strict=False)
    except Exception as error:  # noqa: BLE001 - any reader failure means a bad file
        raise unreadable_weights(spec, path, error) from None
    missing = list(getattr(incompatible, "missing_keys", []))
    unexpected = [k for k in getattr(incompatible, "unexpected_keys", [])
                  if not (classifier and k.startswith(f"{classifier}."))]
    if missing or unexpected:
        raise AdapterError(f"{spec}: weights file {path} does not fit the model: "
                           f"{len(missing)} missing keys (e.g. {missing[:2]}), "
                           f"{len(unexpected)} unexpected keys (e.g. {unexpected[:2]})")


def hub_record(model: torch.nn.Module) -> dict[str, Any]:
    """Which hub file the pretrained weights came from, and its sha256."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    record: dict[str, Any] = {"pretrained_tag": cfg.get("tag"), "hf_hub_id": cfg.get("hf_hub_id")}
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                record |= {"weights": found, "weights_sha256": sha256_file(found),
                           "revision": Path(found).parent.name}
                break
    return record


@extractor("timm")
def make_timm(options: dict[str, str], profile: Any) -> TrainableModel:
    spec = "timm:" + options.get("arg", "")
    check_options(spec, options, OPTIONS)
    name = options.get("arg")
    if not name:
        raise AdapterError("timm needs a model name: --extractors timm:resnet50 "
                           "(timm.list_models() lists them)")
    timm = require("timm", spec)
    weights = options.get("weights")
    seed = int(options.get("seed", 0))
    config: dict[str, Any] = {"library": "timm", "version": timm.__version__, "model": name}
    try:
        if weights is None:
            try:
                model = timm.create_model(name, pretrained=True, num_classes=0)
            except Exception as error:  # noqa: BLE001 - offline hub miss, unknown tag, ...
                raise AdapterError(
                    f"{spec}: no local pretrained weights for {name!r} "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); nothing is "
                    f"downloaded at run time: fetch them once into the Hugging Face hub cache "
                    f"(HF_HOME) on a machine with network, or give {spec}:weights=FILE, or "
                    f"weights=random") from None
            config |= hub_record(model)
            label = f"timm:{name}"
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = timm.create_model(name, pretrained=False, num_classes=0)
            if weights == "random":
                config |= {"weights": "random", "seed": seed}
                label = f"timm:{name}:random"
            else:
                path = weights_file(weights, spec, "a state dict of the model (torch.save or "
                                    ".safetensors)")
                load_weights(timm, model, path, spec)
                config |= {"weights": str(path.resolve()), "weights_sha256": sha256_file(path)}
                label = f"timm:{name}:{path.stem}"
    except RuntimeError as error:  # timm: unknown model name
        raise AdapterError(f"{spec}: {str(error).splitlines()[0]}") from None
    data_config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**data_config, is_training=False)
    config |= {"input_size": list(data_config["input_size"]),
               "crop_pct": data_config.get("crop_pct"),
               "interpolation": data_config.get("interpolation")}
    model = eval_module(model)
    return TrainableModel(display_name(label, options), config, transform, model,
                         image_size=int(data_config["input_size"][-1]),
                         mean=data_config["mean"], std=data_config["std"], backbone=model,
                         batch_size=batch_size(options, spec),
                         device=device_option(options))
