"""``finetune_classify`` and ``finetune_retrieval``: does the backbone itself transfer, when it is
trained further on the task? (Visual4Rec Tables 5 and 6, fine-tuned rows.)

Both tasks declare ``extractor_protocol = BackboneExtractor``: the runner checks it and skips
an extractor without ``backbone()`` with that reason. They train a copy of the backbone
(``bench.train.finetune``: one budgeted SGD loop, augmentations, cached results) once per seed and
report variant ``ft`` (their only variant: they read no vectors, only the backbone):

- ``finetune_classify``: the whole network plus a linear head, cross-entropy on the train-split
  product shots of ``classify`` (same split), scored on its test split: ``finetune_top1``,
  ``finetune_top5``.
- ``finetune_retrieval``: metric learning on train-split identity pairs (a scene-crop query and
  a product shot of the same identity; two items of one identity on datasets without roles)
  with lightly's NTXentLoss (InfoNCE, the other pairs of the batch as negatives), then the
  queries and gallery of ``retrieval`` scored with the fine-tuned backbone's L2-normalised
  features (exact search): ``finetune_recall@N``, ``finetune_map@r``.

Both also report ``finetune_s`` (training wall time) and ``finetune_steps``. Their reference
rows (``references``) are the scratch baselines: per architecture and input size among the
run's backbone extractors, a re-initialised copy trained by the same loop with the same budget,
reported as extractor ``scratch:<arch>`` (e.g. ``scratch:resnet18-w32-strided``). The backbone
it is re-initialised from is the first such extractor in reference order; the result depends
only on the architecture, and it is cached per (dataset, architecture, image size, budget,
seed). Verdicts test each ``ft`` row against it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from bench.core.data import Dataset
from bench.core.extractor import BackboneExtractor
from bench.core.metric_info import MetricInfo, cost, count
from bench.embed.embeddings import Embeddings
from bench.tasks import Reference, Task, TaskContext, task
from bench.tasks.classify import Classify, Split, accuracy_metrics, make_split
from bench.tasks.retrieval import IdentityRetrieval, query_and_gallery, retrieval_metrics
from bench.train import finetune as ft
from bench.train.precision import resolve_precision

FINETUNED = "ft"  # the variant of every fine-tuned row (and of the scratch rows)


def training_precision(ctx: TaskContext) -> str:
    """The run's training precision (the profile's, ``auto`` when none) resolved for the
    device the tasks train on."""
    return resolve_precision(getattr(ctx.profile, "precision", None), ctx.device)


def budget_of(ctx: TaskContext) -> ft.Budget:
    """The task options' fine-tuning budget, at the run's training precision."""
    return replace(ft.Budget.from_options(ctx.options), precision=training_precision(ctx))


def scratch_references(extractors: list[tuple[str, Any]], dataset: Dataset
                       ) -> list[Reference]:
    """One ``scratch:<arch>`` reference per (architecture, image size) among the backbone
    extractors, in reference order; its source is the first extractor of that architecture,
    and every extractor of that architecture is tested against it.
    Two architectures with the same readable label get their image size appended."""
    groups: dict[str, tuple[str, str, list[str]]] = {}
    for spec, extractor in extractors:
        if not isinstance(extractor, BackboneExtractor):
            continue
        key, label = ft.scratch_architecture(extractor, image_size(extractor, dataset))
        groups.setdefault(key, (spec, label, []))[2].append(str(extractor.name))
    labels = [label for _, label, _ in groups.values()]
    out = []
    for key, (spec, label, members) in groups.items():
        if labels.count(label) > 1:
            label = f"{label}-{key.rsplit('-', 1)[1]}px"
        out.append(Reference(f"scratch:{label}", spec, (FINETUNED,), reference_of=tuple(members)))
    return out


def image_size(extractor: Any, dataset: Dataset) -> int | None:
    return getattr(extractor, "image_size", dataset.image_size)


class _Finetune(Task):
    """What both fine-tuning tasks share: the protocol they need, their one variant, the
    budget from their options, and the scratch reference rows."""

    extractor_protocol = BackboneExtractor
    seeded = True
    variants = (FINETUNED,)
    cache_name = ""  # the task name in cached results' keys (the frozen task's, kept warm)

    def data_key(self, dataset: Dataset, seed: int, options: dict[str, Any]) -> tuple:
        raise NotImplementedError

    def train_and_score(self, dataset: Dataset, ctx: TaskContext) -> Any:
        raise NotImplementedError

    def result_key(self, dataset: Dataset, ctx: TaskContext) -> tuple:
        """``data_key`` and the run's training precision: fine-tuned numbers differ between
        precisions, so a result is cached per precision."""
        return (*self.data_key(dataset, ctx.seed, ctx.options), training_precision(ctx))

    def evaluate(self, embeddings: Embeddings, dataset: Dataset,
                 ctx: TaskContext) -> list[dict[str, Any]]:
        """The extractor's backbone fine-tuned (a copy), cached by its embeddings fingerprint."""
        result = ft.own_result(self.cache_name, ctx.extractor, embeddings.meta.get("fingerprint"),
                               self.result_key(dataset, ctx), ctx.seed,
                               ctx.cache, self.train_and_score(dataset, ctx))
        return ft.result_rows(result)

    def references(self, extractors: list[tuple[str, Any]], dataset: Dataset,
                   options: dict[str, Any]) -> list[Reference]:
        return scratch_references(extractors, dataset)

    def evaluate_reference(self, reference: Reference, embeddings: Embeddings | None,
                           dataset: Dataset, ctx: TaskContext) -> list[dict[str, Any]]:
        """A scratch baseline: ``ctx.extractor`` (the reference's source) lends its backbone's
        architecture, re-initialised."""
        result = ft.scratch_result(self.cache_name, ctx.extractor,
                                   image_size(ctx.extractor, dataset),
                                   self.result_key(dataset, ctx), ctx.seed,
                                   ctx.cache, self.train_and_score(dataset, ctx))
        return ft.result_rows(result)


# --------------------------------------------------------------------------- classification


def classify_scores(backbone: nn.Module, dataset: Dataset, split: Split, budget: ft.Budget,
                    seed: int, to_tensor: ft.ToTensor, eval_batch_size: int,
                    device: torch.device) -> dict[str, Any]:
    """Fine-tune ``backbone`` (a copy) on train, score on test: metrics plus the training log."""
    model, log_ = ft.finetune_classifier(backbone, dataset.images(split.train), split.train_y,
                                         len(split.classes), budget, seed, to_tensor, device)
    logits = ft.predict(model, dataset.images(split.test), to_tensor, device, eval_batch_size)
    metrics, evidence = accuracy_metrics(logits, split.test_y, "finetune",
                                         dataset.ids[split.test])
    return log_.result(metrics, budget, evidence)


class FinetuneClassify(_Finetune):
    name = "finetune_classify"
    description = ("Leaf-category classification by the whole backbone fine-tuned with a "
                   "linear head, against the same architecture trained from scratch with the "
                   "same budget (scratch:*).")
    stage = "transfer"
    cache_name = "classify"
    main_score = "finetune_top1"
    metrics = (MetricInfo("finetune_top*", unit="item"), cost("finetune_s"),
               count("finetune_steps"))
    needs = ("an extractor with backbone() (BackboneExtractor)",
             "category on train and test product shots")
    defaults = {
        "quick": dict(epochs=1, max_steps=4, batch_size=32, lr=0.05, max_seconds=0,
                      eval_batch_size=256),
        # one seed (bootstrap intervals over test items): a second cost 40 s of the default
        # run's 15 minutes
        "default": dict(epochs=20, max_steps=0, batch_size=64, lr=0.05, max_seconds=300,
                        eval_batch_size=256, max_seeds=1),
        "full": dict(epochs=40, batch_size=256, lr=0.1, max_seconds=900, eval_batch_size=1024),
    }

    def skip_reason(self, dataset: Dataset) -> str | None:
        return Classify().skip_reason(dataset)

    def split(self, dataset: Dataset, seed: int, options: dict[str, Any]) -> Split:
        return make_split(dataset, seed, float(options.get("val_fraction", 0.2)))

    def data_key(self, dataset: Dataset, seed: int, options: dict[str, Any]) -> tuple:
        split = self.split(dataset, seed, options)
        return (dataset.fingerprint, split.classes.tolist(), len(split.train),
                ft.Budget.from_options(options).key())

    def train_and_score(self, dataset: Dataset, ctx: TaskContext) -> Any:
        split = self.split(dataset, ctx.seed, ctx.options)
        budget = budget_of(ctx)
        batch = int(ctx.options.get("eval_batch_size", 256))
        device = torch.device(ctx.device)
        return lambda model, to_tensor: classify_scores(model, dataset, split, budget, ctx.seed,
                                                        to_tensor, batch, device)


# --------------------------------------------------------------------------- image search


def training_groups(dataset: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per train identity, (anchor rows, positive rows): train queries and train product shots,
    or on datasets without roles the identity's train items on both sides (a pair then takes
    two different items). Identities that cannot form a pair are left out."""
    if not dataset.has("identity"):
        return []
    if "role" in dataset.table.columns and (dataset.table["role"] == "query").any():
        anchors = dataset.rows(role="query", split="train", labelled="identity")
        positives = dataset.rows(role="product", split="train", labelled="identity")
    else:
        anchors = positives = dataset.rows(split="train", labelled="identity")
    identity = dataset.table["identity"].astype(str).to_numpy()
    by_identity = pd.Series(positives).groupby(identity[positives]).agg(list)
    groups = []
    for key, members in pd.Series(anchors).groupby(identity[anchors]).agg(list).items():
        if key in by_identity.index:
            a, p = np.asarray(members), np.asarray(by_identity[key])
            if len(np.union1d(a, p)) >= 2:
                groups.append((a, p))
    return groups


class PairSampler:
    """One random (anchor, positive) pair per requested identity, as positions into the image
    array of ``rows``."""

    def __init__(self, groups: list[tuple[np.ndarray, np.ndarray]], seed: int):
        self.rows = np.unique(np.concatenate([np.concatenate(g) for g in groups]))
        self.groups = [(np.searchsorted(self.rows, a), np.searchsorted(self.rows, p))
                       for a, p in groups]
        self.rng = np.random.default_rng(seed)

    def __call__(self, indices: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        anchors, positives = [], []
        for i in indices.tolist():
            a_side, p_side = self.groups[i]
            anchor = a_side[self.rng.integers(len(a_side))]
            candidates = p_side[p_side != anchor]
            anchors.append(anchor)
            positives.append(candidates[self.rng.integers(len(candidates))])
        return np.asarray(anchors), np.asarray(positives)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_scores(backbone: nn.Module, dataset: Dataset, groups: list, budget: ft.Budget,
                     seed: int, to_tensor: ft.ToTensor, temperature: float,
                     eval_batch_size: int, device: torch.device) -> dict[str, Any]:
    """Metric-learn ``backbone`` (a copy) on train pairs, then score test queries."""
    sampler = PairSampler(groups, seed)
    model, log_ = ft.finetune_pairs(backbone, dataset.images(sampler.rows), sampler, len(groups),
                                    budget, seed, to_tensor, device, temperature)
    queries, gallery = query_and_gallery(dataset)
    identity = dataset.table["identity"].astype(str).to_numpy()

    def features(rows_: np.ndarray) -> np.ndarray:
        return l2_normalise(ft.predict(model, dataset.images(rows_), to_tensor, device,
                                       eval_batch_size))

    scores, evidence = retrieval_metrics(features(queries), identity[queries], features(gallery),
                                         identity[gallery], dataset.ids[queries])
    return log_.result({f"finetune_{name}": value for name, value in scores.items()}, budget,
                       {f"finetune_{name}": item for name, item in evidence.items()})


class FinetuneRetrieval(_Finetune):
    name = "finetune_retrieval"
    description = ("Image search with the backbone metric-learned on train identity pairs, "
                   "against the same architecture trained from scratch with the same budget "
                   "(scratch:*).")
    stage = "image search"
    cache_name = "retrieval"
    main_score = "finetune_recall@1"
    metrics = (MetricInfo("finetune_recall@*", unit="query"),
               MetricInfo("finetune_map@r", unit="query"), cost("finetune_s"),
               count("finetune_steps"))
    needs = ("an extractor with backbone() (BackboneExtractor)", "identity",
             "at least two train identities with a (query, product) pair")
    defaults = {
        "quick": dict(epochs=1, max_steps=4, batch_size=32, lr=0.05, temperature=0.1,
                      max_seconds=0, eval_batch_size=256),
        "default": dict(epochs=6, max_steps=24, batch_size=32, lr=0.05, temperature=0.1,
                        max_seconds=45, eval_batch_size=256, max_seeds=1),  # as above
        "full": dict(epochs=40, batch_size=128, lr=0.1, temperature=0.1, max_seconds=900,
                     eval_batch_size=1024),
    }

    def skip_reason(self, dataset: Dataset) -> str | None:
        reason = IdentityRetrieval().skip_reason(dataset)
        if reason is None and len(training_groups(dataset)) < 2:
            reason = "fewer than two train identities with a (query, product) pair"
        return reason

    def data_key(self, dataset: Dataset, seed: int, options: dict[str, Any]) -> tuple:
        return (dataset.fingerprint, len(training_groups(dataset)),
                ft.Budget.from_options(options).key(), float(options.get("temperature", 0.1)))

    def train_and_score(self, dataset: Dataset, ctx: TaskContext) -> Any:
        groups = training_groups(dataset)
        budget = budget_of(ctx)
        temperature = float(ctx.options.get("temperature", 0.1))
        batch = int(ctx.options.get("eval_batch_size", 256))
        device = torch.device(ctx.device)
        return lambda model, to_tensor: retrieval_scores(model, dataset, groups, budget,
                                                         ctx.seed, to_tensor, temperature,
                                                         batch, device)


@task("finetune_classify")
def make_finetune_classify() -> FinetuneClassify:
    return FinetuneClassify()


@task("finetune_retrieval")
def make_finetune_retrieval() -> FinetuneRetrieval:
    return FinetuneRetrieval()
