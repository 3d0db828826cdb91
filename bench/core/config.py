"""Profiles: how big the data is, how long each extractor trains, which extractors and tasks run.

``quick`` is for tests and CI (about a minute), ``default`` is what ``make bench`` runs on a
laptop CPU, ``full`` is sized for a GPU and chosen automatically when CUDA is present.
Each section is a plain dict so plugins can read their own keys without new classes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    datasets: dict[str, dict[str, Any]]
    extractors: tuple[str, ...]
    tasks: tuple[str, ...]
    seeds: int
    train: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    embed_batch_size: int = 256
    # the ``w`` variant: BERT-whitening's dimension k ("auto": chosen on train rows, "full", a
    # number) and shrinkage ("auto": chosen with k, or a number), fitted per task on its
    # population's train split (bench/vectors/variants.py)
    whitening: dict[str, Any] = field(default_factory=lambda: {"k": "auto",
                                                               "shrinkage": "auto"})
    # the training precision (bench/train/precision.py): auto (bf16 where the device has it
    # natively, else fp32), fp32 or bf16; `bench run --precision` overrides it, and the run
    # resolves it once (run.json ``profile.precision``, every training's cache key)
    precision: str = "auto"

    def budget(self, extractor: str, defaults: dict[str, dict[str, Any]] | None = None
               ) -> dict[str, Any]:
        """Training budget for an extractor, later sources winning: this profile's shared
        ``*`` section (what every extractor's backbone shares: size, width, architecture,
        device), then the plugin's own per-profile ``defaults`` (keyed by profile name: its
        epochs, batch size and safety stop), then this profile's section named after the
        extractor. ``*`` therefore fills only what a plugin leaves unset (``random``, whose
        backbone must match the learned ones', reads all of it; tests/test_config.py). The
        profile's ``precision`` comes first, so any of them may override it."""
        merged = {"precision": self.precision, **self.train.get("*", {})}
        merged.update((defaults or {}).get(self.name, {}))
        merged.update(self.train.get(extractor, {}))
        return merged

    def dataset_options(self, dataset: str) -> dict[str, Any]:
        return dict(self.datasets.get(dataset, {}))

    def options(self, task: str, defaults: dict[str, dict[str, Any]] | None = None
                ) -> dict[str, Any]:
        """Task options: the task's own per-profile ``defaults``, then this profile's section."""
        merged = dict((defaults or {}).get(self.name, {}))
        merged.update(self.task_options.get(task, {}))
        return merged


# The known-answer ladder (extractors/ladder.py): ceiling, two noise levels, floor. The default
# and full profiles run it beside the real extractors, for the report's validity table.
LADDER = ("ladder:clean", "ladder:noise=0.15", "ladder:noise=0.3", "ladder:random")

_QUICK = Profile(
    name="quick",
    datasets={
        # 600 users (29k impressions): the smallest log on which ctr orders the ladder
        "homestead": dict(image_size=32, n_products=360, n_covers=480, n_queries=160,
                          n_users=600, n_days=4, impressions_per_user_day=12, seed=0),
        "digits": dict(image_size=32),
        "folder": dict(image_size=32),
    },
    extractors=("pixels", "random", "pretrained", "moco_v2", "swav", "m6_moe",
                "m6_moe_image_only"),
    tasks=("knn", "retrieval", "classify", "finetune_classify", "finetune_retrieval", "ctr",
           "online", "candidate_recall"),
    seeds=1,
    train={"*": dict(image_size=32, width=16)},
)

_DEFAULT = Profile(
    name="default",
    datasets={
        # 2000 queries: 1,376 test queries, so frozen recall@10 has intervals of about +-0.016
        "homestead": dict(image_size=32, n_products=1500, n_covers=2400, n_queries=2000,
                          n_users=600, n_days=6, impressions_per_user_day=20, seed=0),
        "digits": dict(image_size=32),
        "folder": dict(image_size=32),
    },
    extractors=("pixels", "random", "pretrained", "moco_v2", "swav", "m6_moe",
                "m6_moe_image_only", *LADDER),
    tasks=("knn", "retrieval", "classify", "finetune_classify", "finetune_retrieval", "ctr",
           "online", "candidate_recall"),
    seeds=2,  # with bootstrap intervals over units; 3 seeds did not fit 15 minutes (docs/metrics.md)
    train={"*": dict(image_size=32, width=32)},
)

_FULL = Profile(
    name="full",
    datasets={
        "homestead": dict(image_size=64, n_products=6000, n_covers=12000, n_queries=3000,
                          n_users=4000, n_days=8, impressions_per_user_day=30, seed=0),
        "digits": dict(image_size=64),
        "folder": dict(image_size=96),
    },
    extractors=("pixels", "random", "pretrained", "moco_v2", "swav", "m6_moe",
                "m6_moe_image_only", *LADDER),
    tasks=("knn", "retrieval", "classify", "finetune_classify", "finetune_retrieval", "ctr",
           "online", "candidate_recall"),
    seeds=3,
    train={"*": dict(image_size=64, width=64, arch="resnet18")},
    embed_batch_size=512,
)

PROFILES = {p.name: p for p in (_QUICK, _DEFAULT, _FULL)}


def get_profile(name: str | None) -> Profile:
    """The named profile; ``None`` picks ``full`` when CUDA is present, else ``default``."""
    if name is None:
        import torch

        name = "full" if torch.cuda.is_available() else "default"
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return copy.deepcopy(PROFILES[name])
