"""``hf:PATH_OR_ID[:mode=image|text|fused]``: a Hugging Face transformers image model.

``PATH_OR_ID`` is a folder written by ``save_pretrained`` or a hub id already in the local hub
cache (offline: nothing is downloaded). Two kinds of model:

- an image encoder (``AutoModel`` with ``AutoImageProcessor``: ViT, DINOv2, ConvNeXt, ResNet,
  ...): the embedding is the model's pooled output (``pooler_output``; the mean of the last
  hidden states for a model without a pooler);
- a CLIP-style dual encoder (a model with ``get_image_features`` and ``get_text_features``,
  with ``AutoProcessor``'s tokenizer): ``mode=image`` (default) embeds images, ``mode=text``
  the items' titles, ``mode=fused`` both (a multimodal extractor, like ``m6_moe``; see
  bench/adapters/shared.py).

Images are preprocessed by the model's own image processor in DataLoader workers. ``config()``
records the hub revision (the snapshot's commit) or the sha256 of the saved weight files.
Options: ``mode``, ``batch_size`` (default 64), ``name`` (the row label).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from bench.adapters.shared import (
    AdapterError,
    TrainableModel,
    batch_size,
    device_option,
    display_name,
    eval_module,
    folder_sha256,
    module_device,
    parse_mode,
    require,
    unreadable_weights,
)
from bench.core.registry import check_options, extractor
from bench.train.backbones import IMAGENET_MEAN, IMAGENET_STD

OPTIONS = ("arg", "mode", "batch_size", "name", "device")
WEIGHT_FILES = ("*.safetensors", "*.bin")


class ProcessorTransform:
    """PIL image -> the model's pixel tensor, by its own image processor (in a worker)."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def pooled(output: Any) -> torch.Tensor:
    """A model output's pooled vector: the tensor itself, ``pooler_output`` (flattened: conv
    models pool to [n, C, 1, 1]), else the mean of ``last_hidden_state`` over tokens."""
    if isinstance(output, torch.Tensor):
        return output.flatten(1)
    pooler = getattr(output, "pooler_output", None)
    if pooler is not None:
        return pooler.flatten(1)
    hidden = output.last_hidden_state
    return hidden.mean(dim=1) if hidden.dim() == 3 else hidden.flatten(2).mean(-1)


class ImageTower(nn.Module):
    """Pixel tensors -> image features, for embedding and for fine-tuning tasks."""

    def __init__(self, model: nn.Module, dual: bool):
        super().__init__()
        self.model, self.dual = model, dual

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.dual:
            return pooled(self.model.get_image_features(pixel_values=pixel_values))
        return pooled(self.model(pixel_values=pixel_values))


def resolve(path_or_id: str, spec: str) -> tuple[Path, dict[str, Any]]:
    """A local folder, or the hub-cache snapshot of an id (offline); its revision record."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path, {"path": str(path.resolve()),
                      "weights_sha256": folder_sha256(path, WEIGHT_FILES)}
    if path.suffix or path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1:
        raise AdapterError(f"{spec}: no model folder at {path}; save one there with "
                           f"model.save_pretrained(PATH) and processor.save_pretrained(PATH)")
    hub = require("huggingface_hub", spec)
    try:
        snapshot = Path(hub.snapshot_download(path_or_id, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - not in the local cache
        raise AdapterError(
            f"{spec}: {path_or_id!r} is neither a folder nor in the local Hugging Face hub cache "
            f"({type(error).__name__}); nothing is downloaded at run time: fetch it once on a "
            f"machine with network (huggingface-cli download {path_or_id}) into the cache "
            f"(HF_HOME), or save it to a folder and give hf:FOLDER") from None
    return snapshot, {"hub_id": path_or_id, "revision": snapshot.name,
                      "weights_sha256": folder_sha256(snapshot, WEIGHT_FILES)}


def processor_geometry(processor: Any) -> tuple[int, tuple, tuple]:
    """Input side, mean and std of an image processor (for ``preprocess`` in fine-tuning)."""
    side = int(ProcessorTransform(processor)(Image.new("RGB", (64, 64))).shape[-1])
    mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
    return side, mean, std


@extractor("hf")
def make_hf(options: dict[str, str], profile: Any) -> TrainableModel:
    spec = "hf:" + options.get("arg", "")
    check_options(spec, options, OPTIONS)
    if not options.get("arg"):
        raise AdapterError("hf needs a model folder or hub id: --extractors hf:PATH_OR_ID")
    transformers = require("transformers", spec)
    mode = parse_mode(options, spec)
    folder, record = resolve(options["arg"], spec)
    try:
        model = transformers.AutoModel.from_pretrained(folder)
        processor = transformers.AutoImageProcessor.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 - any loader failure is one line, never a traceback
        text = str(error).strip()
        if isinstance(error, pickle.UnpicklingError) or "weights_only" in text:
            weights = sorted(p.name for p in Path(folder).glob("*.bin")) or ["its weights"]
            raise unreadable_weights(spec, Path(folder) / weights[0], error) from None
        raise AdapterError(f"{spec}: cannot load a model and image processor from {folder} "
                           f"({type(error).__name__}: {text.splitlines()[0][:200] if text else ''})"
                           ) from None
    model = eval_module(model)
    dual = callable(getattr(model, "get_image_features", None)) and callable(
        getattr(model, "get_text_features", None))
    text_features = None
    if dual:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        limit = getattr(getattr(model.config, "text_config", None), "max_position_embeddings",
                        77)

        def text_features(titles: list[str]) -> torch.Tensor:
            tokens = tokenizer(titles, padding=True, truncation=True, max_length=limit,
                               return_tensors="pt").to(module_device(model))
            return pooled(model.get_text_features(input_ids=tokens["input_ids"],
                                                  attention_mask=tokens["attention_mask"]))
    elif mode != "image":
        raise AdapterError(f"{spec}: mode={mode} needs a CLIP-style model with a text tower; "
                           f"{type(model).__name__} reads images only")
    side, mean, std = processor_geometry(processor)
    tower = ImageTower(model, dual)
    config = {"library": "transformers", "version": transformers.__version__,
              "model_class": type(model).__name__, "dual_encoder": dual} | record
    base = f"hf:{options['arg']}" if "hub_id" in record else f"hf:{folder.name}"
    label = display_name(base, options, mode)
    return TrainableModel(label, config, ProcessorTransform(processor), tower, image_size=side,
                         mean=mean, std=std, text_features=text_features, mode=mode,
                         backbone=tower, batch_size=batch_size(options, spec),
                         device=device_option(options))
