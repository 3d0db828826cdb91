"""``moco_v2``: MoCo v2 trained without labels on the dataset's ``train`` images (every role;
``train_role=content`` keeps the content covers only).

Built from lightly's pieces as in its MoCo example: a query encoder (backbone +
``MoCoProjectionHead``) trained by SGD; a key encoder that is its exponential moving average
(``update_momentum``, momentum cosine-scheduled towards 1 with ``cosine_schedule``, no gradient
via ``deactivate_requires_grad``); ``NTXentLoss`` whose negatives come from a memory bank of past
keys; two ``MoCoV2Transform``-style views per image, drawn by the batched augmentations of
``bench.train.loop`` (lightly's transform defaults with lightly's knobs set for 32 px images: no
blur, as in lightly's CIFAR-10 benchmark, ``cj_strength`` 0.5, crops of at least 60 % of the
image, which kept the room layout that scene labels depend on; see docs/learned-extractors.md).
The embedding is the backbone's pooled features, not the projection.

Budgets (``DEFAULTS``): ``quick`` trains a width-16 ResNet-18 for one short epoch; ``default``
a width-32 ResNet-18 with the strided stem on 32 px images for 25 epochs with a 256-key bank
(under 2 minutes in bf16 on 2 idle CPU cores with avx512_bf16; raised from 10 with the time bf16
freed, docs/learned-extractors.md; ``max_seconds`` is only a safety stop); ``full`` a width-64 ResNet-18
with the small-image stem on 64 px images for 100 epochs with a 4096-key bank, for a GPU.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import MoCoV2Transform
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from bench.core.registry import extractor
from bench.train.augment import ViewSpec, augment, lightly_view, to_unit
from bench.train.loop import StepInfo
from bench.train.options import resolve_options
from bench.train.ssl import BackboneEmbedder

NAME = "moco_v2"
_COMMON = dict(arch="resnet18", lr=0.06, momentum=0.9, weight_decay=5e-4, temperature=0.2,
               ema_start=0.99, hidden_dim=512, out_dim=128, cj_strength=0.5, min_scale=0.6,
               blur=0.0, train_role="all", seed=0, device="")
DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": _COMMON | dict(width=16, stem="strided", image_size=32, epochs=1, batch_size=64,
                            max_seconds=0.0, memory_bank=256),
    "default": _COMMON | dict(width=32, stem="strided", image_size=32, epochs=25,
                              batch_size=128, max_seconds=500.0, memory_bank=256),
    "full": _COMMON | dict(width=64, stem="small", image_size=64, epochs=100, batch_size=256,
                           max_seconds=1800.0, memory_bank=4096, ema_start=0.996,
                           hidden_dim=2048, blur=0.5),
}


class MoCo(nn.Module):
    """Query encoder and its momentum copy (the key encoder)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.backbone = backbone
        self.projection_head = MoCoProjectionHead(feature_dim, hidden_dim, out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    @torch.no_grad()
    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1))


class MoCoV2Method:
    """One MoCo v2 step: momentum update, two views, query vs key with bank negatives."""

    def __init__(self, backbone: nn.Module, feature_dim: int, options: dict[str, Any],
                 memory_bank: int):
        torch.manual_seed(options["seed"])
        self.model = MoCo(backbone, feature_dim, options["hidden_dim"], options["out_dim"])
        self.criterion = NTXentLoss(temperature=options["temperature"],
                                    memory_bank_size=(memory_bank, options["out_dim"])
                                    if memory_bank else 0)
        self.view = moco_view(options["image_size"], options["cj_strength"],
                              options["min_scale"], options["blur"])
        self.ema_start = options["ema_start"]

    def loss(self, images: torch.Tensor, targets: torch.Tensor | None,
             info: StepInfo) -> torch.Tensor:
        momentum = cosine_schedule(info.step, info.total_steps, self.ema_start, 1.0)
        update_momentum(self.model.backbone, self.model.backbone_momentum, m=momentum)
        update_momentum(self.model.projection_head, self.model.projection_head_momentum,
                        m=momentum)
        x = to_unit(images)
        query = self.model(augment(x, self.view, info.generator))
        key = self.model.forward_momentum(augment(x, self.view, info.generator))
        return self.criterion(query.float(), key.float())


def moco_view(size: int, cj_strength: float = 1.0, min_scale: float = 0.2,
              blur: float = 0.0) -> ViewSpec:
    """``MoCoV2Transform``'s augmentations at ``size`` px with lightly's knobs."""
    return lightly_view(MoCoV2Transform, size, cj_strength=cj_strength, min_scale=min_scale,
                        blur=blur)


class MoCoV2Extractor(BackboneEmbedder):
    name = NAME

    def method(self, n_items: int) -> MoCoV2Method:
        # A bank larger than half the data would hold stale keys of the query's own image.
        bank = min(int(self.options["memory_bank"]), n_items // 2)
        return MoCoV2Method(self.model, self.dim, self.options, bank)


@extractor(NAME)
def make_moco_v2(options: dict[str, str], profile: Any) -> MoCoV2Extractor:
    resolved = resolve_options(NAME, DEFAULTS, profile, options)
    return MoCoV2Extractor(resolved, batch_size=profile.embed_batch_size)
