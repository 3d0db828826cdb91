"""``pretrained``: the supervised baseline, a stand-in for an ImageNet-pretrained CNN.

The reference study's online embedding came from a CNN trained with labels on another, coarser
task (ImageNet). Here the backbone is trained with cross-entropy on the coarse categories
(``coarse_category``) of the dataset's ``pretrain`` split, product shots only where the dataset
has roles: disjoint items and a coarser task than the leaf categories evaluated later. A dataset
without coarse categories falls back to ``category``; with neither, ``fit`` says so. The
augmentations are the ImageNet-training ones (random resized crop and flip, no colour jitter).

``pretrained:weights=PATH`` instead loads real torchvision ResNet weights from a local file
(``torch.load(..., weights_only=True)``; nothing is downloaded) into the standard ImageNet stem
at full width; the architecture is read from the file unless ``arch=`` names it, and a file that
does not fit is refused with the missing and unexpected keys. Then ``fit`` trains nothing.

Budgets (``DEFAULTS``) follow ``moco_v2``; the pretrain split is small, so ``default`` runs more
(cheaper, single-view) epochs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.extractor import FitContext
from bench.core.registry import extractor
from bench.train.augment import ViewSpec, augment, to_unit
from bench.train.backbones import build_backbone, pick_device
from bench.train.checkpoint import checkpoint_key
from bench.train.loop import StepInfo
from bench.train.options import resolve_options
from bench.train.ssl import BackboneEmbedder, TrainConfig, train, with_precision

NAME = "pretrained"
LABEL_COLUMNS = ("coarse_category", "category")
_COMMON = dict(arch="resnet18", lr=0.1, momentum=0.9, weight_decay=5e-4, min_scale=0.35,
               label_smoothing=0.1, seed=0, device="")
DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": _COMMON | dict(width=16, stem="strided", image_size=32, epochs=1, batch_size=64,
                            max_seconds=0.0),
    "default": _COMMON | dict(width=32, stem="strided", image_size=32, epochs=20,
                              batch_size=64, max_seconds=300.0),
    "full": _COMMON | dict(width=64, stem="small", image_size=64, epochs=90, batch_size=256,
                           max_seconds=1200.0),
}
WEIGHTS_IMAGE_SIZE = 64  # input size for torchvision weights unless image_size= says otherwise


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).flatten(start_dim=1))


class SupervisedMethod:
    """One cross-entropy step on a randomly cropped and flipped view."""

    def __init__(self, backbone: nn.Module, feature_dim: int, n_classes: int,
                 options: dict[str, Any]):
        torch.manual_seed(options["seed"])
        self.model = Classifier(backbone, feature_dim, n_classes)
        self.view = ViewSpec(size=options["image_size"], min_scale=options["min_scale"],
                             cj_prob=0.0, gray=0.0)
        self.label_smoothing = options["label_smoothing"]

    def loss(self, images: torch.Tensor, targets: torch.Tensor | None,
             info: StepInfo) -> torch.Tensor:
        logits = self.model(augment(to_unit(images), self.view, info.generator))
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)


def pretrain_rows(dataset: Any) -> tuple[np.ndarray, str]:
    """Pretrain-split rows (product shots where roles exist) and the label column to learn."""
    for column in LABEL_COLUMNS:
        if column not in dataset.table.columns:
            continue
        rows = dataset.rows(role="product", split="pretrain", labelled=column)
        if len(rows) == 0:
            rows = dataset.rows(split="pretrain", labelled=column)
        if len(rows) >= 2 and dataset.table[column].iloc[rows].nunique() >= 2:
            return rows, column
    raise ValueError(f"{NAME}: dataset {dataset.name!r} has no 'pretrain' split items labelled "
                     f"with {' or '.join(LABEL_COLUMNS)} (two classes at least); give "
                     f"pretrained:weights=PATH or use another extractor")


class PretrainedExtractor(BackboneEmbedder):
    name = NAME

    def __init__(self, options: dict[str, Any], batch_size: int = 256):
        self.device = pick_device(options["device"] or None)
        self.options = options = with_precision(options, self.device)
        self.batch_size = batch_size
        self.weights = options.get("weights") or None
        if self.weights:
            self.model, self.options = load_torchvision_weights(Path(self.weights), options)
        else:
            self.model = build_backbone(options["arch"], options["width"],
                                        stem=options["stem"], seed=options["seed"])
        self.image_size = int(self.options["image_size"])
        self.dim = self.model.feature_dim
        self.model.to(self.device)
        self.training_result = None
        self.label_column: str | None = None

    def config(self) -> dict[str, Any]:
        if self.weights:
            keys = ("arch", "image_size", "weights_sha")
            return {"weights": True} | {k: self.options[k] for k in keys}
        return {k: v for k, v in super().config().items() if k != "weights"}

    def method(self, n_classes: int) -> SupervisedMethod:
        return SupervisedMethod(self.model, self.dim, n_classes, self.options)

    def fit(self, dataset: Any, ctx: FitContext) -> None:
        """Supervised training on the pretrain split's coarse categories (cached); nothing
        to do with loaded weights."""
        if self.weights:
            return
        rows, column = pretrain_rows(dataset)
        self.label_column = column
        labels = dataset.table[column].iloc[rows].astype(str).to_numpy()
        classes, targets = np.unique(labels, return_inverse=True)
        config = self.config() | {"label_column": column}
        key = checkpoint_key(NAME, config, dataset.fingerprint, len(rows))
        self.training_result = train(
            self.method(len(classes)), dataset.images(rows), targets,
            TrainConfig.from_options(self.options), name=NAME, key=key, cache=ctx.cache,
            device=self.device, log_dir=ctx.log_dir, progress=ctx.progress)


def infer_arch(state: dict[str, torch.Tensor]) -> str:
    """resnet18/34/50 from a torchvision state dict's block structure."""
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
    blocks = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
    if bottleneck:
        return "resnet50"
    return "resnet34" if blocks >= 6 else "resnet18"


def load_torchvision_weights(path: Path, options: dict[str, Any]
                             ) -> tuple[nn.Module, dict[str, Any]]:
    """A full-width, ImageNet-stem backbone holding the torchvision weights in ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"{NAME}: weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        from bench.adapters.shared import weights_error_detail

        raise ValueError(f"{NAME}: cannot read weights file {path} as a torch state dict "
                         f"({weights_error_detail(error)})") from None
    for nested in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(nested), dict):
            state = state[nested]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{NAME}: weights file {path} holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    arch = options.get("weights_arch") or infer_arch(state)
    model = build_backbone(arch, 64, stem="imagenet")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        problems = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise ValueError(f"{NAME}: weights file {path} does not fit torchvision {arch} "
                         f"(arch= names it): {len(problems)} problems, e.g. "
                         f"{'; '.join(problems[:2])}") from None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    resolved = options | {"arch": arch, "width": 64, "stem": "imagenet", "weights_sha": sha,
                          "image_size": int(options.get("weights_image_size")
                                            or WEIGHTS_IMAGE_SIZE)}
    return model, resolved


@extractor(NAME)
def make_pretrained(options: dict[str, str], profile: Any) -> PretrainedExtractor:
    options = dict(options)
    if "arg" in options:  # ``pretrained:PATH``
        options["weights"] = options.pop("arg")
    if options.get("weights"):
        # arch / image_size describe the weights file, not the profile's training budget
        for key in ("arch", "image_size"):
            if key in options:
                options[f"weights_{key}"] = options.pop(key)
    resolved = resolve_options(NAME, DEFAULTS, profile, options,
                               extra=("weights", "weights_arch", "weights_image_size"))
    return PretrainedExtractor(resolved, batch_size=profile.embed_batch_size)
