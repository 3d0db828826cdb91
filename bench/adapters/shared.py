"""What the third-party model adapters share (``timm:``, ``hf:``, ``open_clip:``, ``torchscript:``).

Each adapter (one plugin file in ``extractors/``) loads a model with its own library, offline
(``bench/__init__`` turns the Hugging Face offline switches on unless the user set them), and
wraps it in ``StreamedModel``: images are read by ``bench.embed.streaming`` in DataLoader workers and
transformed there with the library's own preprocessing at the model's resolution; the forward
runs in eval mode without gradients. CLIP-style models also embed titles (``mode=text``) or
both (``mode=fused``: the mean of the unit image and unit text vectors, renormalised; items
without a title keep their image vector), like the suite's own multimodal ``m6_moe``.

``config()`` holds the library, the model and the weights' sha256 (or the hub revision): it keys
the embeddings cache and goes into ``run.json``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bench.core.extractor import FitContext
from bench.embed.embeddings import check_batch
from bench.embed.streaming import stream, to_rgb
from bench.train.backbones import pick_device

MODES = ("image", "text", "fused")
EXTRA_HINT = "pip install -e '.[models]'"
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


class AdapterError(ValueError):
    """A model spec that cannot be loaded; the message says what to install or where to put
    which file."""


def require(module: str, spec: str, package: str | None = None) -> Any:
    """Import a model library, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise AdapterError(f"{spec}: needs the {package or module} package, which is not "
                           f"installed ({error}); install the models extra: {EXTRA_HINT}"
                           ) from None


def weights_file(path: str | os.PathLike, spec: str, what: str) -> Path:
    """An existing weights file, or an error that says where to put it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AdapterError(f"{spec}: weights file {path} does not exist; put {what} at that "
                           f"path (nothing is downloaded at run time)")
    return path


def unreadable_weights(spec: str, path: str | os.PathLike, error: BaseException) -> AdapterError:
    """One line for a weights file the loader could not read: it is not a state dict this
    tool can read. The loaders' own advice to retry with ``weights_only=False`` (that is,
    to unpickle arbitrary objects) is never passed on: the tool does not offer it."""
    return AdapterError(f"{spec}: {path} is not a state dict the tool can read "
                        f"({weights_error_detail(error)}); save the weights as .safetensors, "
                        f"or with torch.save(model.state_dict(), PATH)")


def weights_error_detail(error: BaseException) -> str:
    """Why a weights file could not be read, in a few words on one line, without the
    loaders' invitation to unpickle (``weights_only=False``)."""
    text = str(error).strip()
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        detail = (f"it holds pickled Python objects besides tensors, e.g. {found.group(1)}, "
                  f"and files are never unpickled")
    elif isinstance(error, pickle.UnpicklingError) or "weights_only" in text:
        detail = "not a readable torch.save or safetensors file: damaged, or not weights"
    else:
        first = text.splitlines()[0].split(". ")[0][:160] if text else ""
        detail = f"{type(error).__name__}: {first}"
    return detail


def sha256_file(path: str | os.PathLike) -> str:
    """The file's sha256 (hex), computed once per (path, size, mtime) in a process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def folder_sha256(folder: str | os.PathLike, patterns: tuple[str, ...]) -> dict[str, str]:
    """sha256 of the weight files in a saved model folder (``save_pretrained`` layout)."""
    folder = Path(folder)
    return {p.name: sha256_file(p) for pattern in patterns for p in sorted(folder.glob(pattern))}


def parse_mode(options: dict[str, str], spec: str) -> str:
    mode = options.get("mode", "image")
    if mode not in MODES:
        raise AdapterError(f"{spec}: mode={mode!r}; choose from {', '.join(MODES)}")
    return mode


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


class StreamedModel:
    """An extractor around a loaded model: ``embed`` streams images through ``transform``
    (PIL -> CHW float tensor, in DataLoader workers) into ``image_features``; with a
    ``text_features`` function it also reads titles (``mode`` text or fused)."""

    def __init__(self, name: str, config: dict[str, Any], transform: Callable[[Image.Image], Any],
                 image_features: Callable[[torch.Tensor], torch.Tensor], *,
                 image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 text_features: Callable[[list[str]], torch.Tensor] | None = None,
                 mode: str = "image", batch_size: int = 64, device: str | None = None):
        self.name, self._config, self.mode = name, config, mode
        self.device = pick_device(device)  # CUDA when present: the model is moved there
        for part in (image_features, getattr(image_features, "model", None)):
            if isinstance(part, nn.Module):
                part.to(self.device)
        self.transform = RGBTransform(transform)
        self.image_features, self.text_features = image_features, text_features
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.batch_size = batch_size
        self.modalities = {"image": ("image",), "text": ("text",),
                           "fused": ("image", "text")}[mode]
        if mode != "image" and text_features is None:
            raise AdapterError(f"{name}: mode={mode} needs a model with a text tower")
        self.dim = self._probe_dim()

    def config(self) -> dict[str, Any]:
        return self._config | {"mode": self.mode}

    def fit(self, dataset: Any, ctx: FitContext) -> None:
        """Pretrained (or deliberately random) weights: nothing to learn."""

    @torch.no_grad()
    def _probe_dim(self) -> int:
        if self.mode == "text":
            return int(self.text_features(["a"]).shape[-1])
        x = self.transform(Image.new("RGB", (self.image_size, self.image_size)))
        x = torch.as_tensor(x)[None].to(self.device)
        return int(self.image_features(x).flatten(1).shape[1])

    @torch.no_grad()
    def embed(self, dataset: Any, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        titles = dataset.titles(rows) if self.mode != "image" else None
        if self.mode == "text":
            for start in range(0, len(rows), self.batch_size):
                batch = titles[start:start + self.batch_size]
                features = self._checked(self.text_features(batch), rows[start:start + len(batch)])
                out[start:start + len(batch)] = unit(torch.from_numpy(features)).numpy()
            return out
        start = 0
        batches = stream(dataset.image_reader(), rows, self.transform, self.batch_size,
                         dataset.info.get("workers"))
        for x in batches:
            features = self.image_features(x.to(self.device, non_blocking=True))
            checked = self._checked(features, rows[start:start + len(x)])
            if self.mode == "fused":
                checked = self._fuse(torch.from_numpy(checked),
                                     titles[start:start + len(x)]).numpy()
            out[start:start + len(x)] = checked
            start += len(x)
        return out

    def _checked(self, features: Any, rows: np.ndarray) -> np.ndarray:
        """One batch's output flattened to [n, dim] on the CPU, refused unless it has exactly
        one finite row of ``self.dim`` per image (an assignment would broadcast [1, dim])."""
        if isinstance(features, torch.Tensor):
            features = features.detach().float()
            features = (features.flatten(1) if features.ndim >= 2 else features).cpu().numpy()
        return check_batch(features, rows, self.name, self.dim)

    def _fuse(self, image: torch.Tensor, titles: list[str]) -> torch.Tensor:
        fused = unit(image)
        titled = [i for i, t in enumerate(titles) if t.strip()]
        if titled:
            text = unit(self.text_features([titles[i] for i in titled])).to(fused.device)
            fused[titled] = unit(fused[titled] + text)
        return fused



class TrainableModel(StreamedModel):
    """A ``StreamedModel`` whose image tower can be fine-tuned by ``classify`` and
    ``retrieval``: ``backbone()`` and ``preprocess()`` as the suite's own extractors have."""

    def __init__(self, *args: Any, backbone: nn.Module, **kwargs: Any):
        self._backbone = backbone
        super().__init__(*args, **kwargs)

    def backbone(self) -> nn.Module:
        """The trainable image tower (normalised tensors -> features)."""
        return self._backbone

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC -> the model's input size and normalisation (for fine-tuning tasks)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        x = x.contiguous().float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std


class RGBTransform:
    """The library's transform, given 8-bit RGB (16-bit grayscale scaled, EXIF applied)."""

    def __init__(self, transform: Callable[[Image.Image], Any]):
        self.inner = transform

    def __call__(self, image: Image.Image) -> Any:
        return self.inner(to_rgb(image))


def module_device(model: nn.Module) -> torch.device:
    """Where a module's parameters are (text tokens are moved there)."""
    return next(model.parameters()).device


def eval_module(model: nn.Module) -> nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def display_name(base: str, options: dict[str, str], mode: str = "image") -> str:
    """``options["name"]`` when given, else ``base`` with ``:text`` / ``:fused`` for the
    non-image modes."""
    if options.get("name"):
        return options["name"]
    return base if mode == "image" else f"{base}:{mode}"


def device_option(options: dict[str, str]) -> str | None:
    """``device=cpu|cuda|cuda:1``; by default CUDA when present, else the CPU."""
    return options.get("device") or None


def positive_int(options: dict[str, str], key: str, spec: str, default: int) -> int:
    """Option ``key`` as an integer >= 1 (``default`` when absent)."""
    try:
        value = int(options.get(key, default))
    except ValueError:
        raise AdapterError(f"{spec}: {key}={options[key]!r} is not an integer") from None
    if value < 1:
        raise AdapterError(f"{spec}: {key} must be >= 1")
    return value


def batch_size(options: dict[str, str], spec: str, default: int = 64) -> int:
    return positive_int(options, "batch_size", spec, default)
