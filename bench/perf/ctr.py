"""``bench perf ctr``: DICM training throughput (samples/s) at the default batch size, and the
same log trained by a DIN reference, with each model's click AUC on the evaluation day.

References, measured in this process on the same log, batch size and thread count:

- ``DIN loop``: a plain PyTorch DIN written after DeepCTR-Torch's ``DIN`` (12-d embeddings,
  local activation unit 64-16 with Dice, unnormalised attention weights, DNN 256-128 ReLU,
  a ``DataLoader`` over one ``TensorDataset`` as DeepCTR's ``fit`` builds it);
- ``DeepCTR-Torch DIN``: the library itself, when it is importable (it is not a dependency of
  the suite: ``pip install --no-deps deepctr-torch==0.3.0``; its import-time version check is
  given a stub ``requests`` when that package is absent, so it never reaches the network).

The design's bar is 2x DeepCTR-Torch DIN's 9,000 samples/s (emb 12, batch 1024, 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bench.scoring.metrics import auc
from bench.tasks.ctr import CtrTask, load
from bench.tasks.ctr.data import CtrData
from bench.tasks.ctr.train import CtrConfig, build_model, evaluate, fit, torch_threads

DESIGN_REFERENCE = 9000.0  # DeepCTR-Torch DIN samples/s on this machine kind (DESIGN.md)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", action="store_true", help="the quick profile's log")
    parser.add_argument("--dataset", default="homestead", choices=["homestead", "synthetic"])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per model (AUC and timing)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--aggregator", default="mqap")
    parser.add_argument("--no-reference", action="store_true", help="only time DICM")


def _dataset(args: argparse.Namespace) -> tuple[Any, np.ndarray]:
    """(dataset, image vectors per dataset row): homestead with ``pixels``, or synthetic."""
    profile_name = "quick" if args.small else "default"
    if args.dataset == "homestead":
        from bench.core import registry
        from bench.core.cache import Cache
        from bench.core.config import get_profile

        registry.load_plugins()
        if "homestead" in registry.DATASETS:
            profile = get_profile(profile_name)
            dataset = registry.build_dataset("homestead", Cache(),
                                             **profile.dataset_options("homestead"))
            pixels = registry.build_extractor("pixels", profile)
            return dataset, pixels.embed(dataset, np.arange(len(dataset)))
        print("homestead is not available; using the synthetic log")
    from bench.tasks.ctr.synthetic import make_log

    size = dict(n_users=120, n_items=480, n_days=4, per_day=12) if args.small else {}
    dataset, embeddings = make_log(**size) if size else make_log(
        n_users=600, n_items=2400, n_days=6, per_day=20)
    return dataset, embeddings.vectors


# ------------------------------------------------------------------ the DIN reference loop


class Dice(nn.Module):
    """DIN's data-adaptive activation, as DeepCTR-Torch writes it (BatchNorm + sigmoid gate)."""

    def __init__(self, width: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(width, eps=1e-8)
        self.alpha = nn.Parameter(torch.zeros(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, width]
        x = x.transpose(1, 2)
        p = torch.sigmoid(self.bn(x))
        return (self.alpha * (1 - p) * x + p * x).transpose(1, 2)


class DinReference(nn.Module):
    """DeepCTR-Torch's DIN layout: user, item and field embeddings; attention over the history
    item ids with a 64-16 Dice local activation unit; DNN 256-128 ReLU; one logit."""

    def __init__(self, n_users: int, n_items: int, field_sizes: list[int], dim: int = 12):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.fields = nn.ModuleList(nn.Embedding(n, dim) for n in field_sizes)
        self.att = nn.Sequential(nn.Linear(4 * dim, 64), Dice(64), nn.Linear(64, 16), Dice(16),
                                 nn.Linear(16, 1))
        width = dim * (3 + len(field_sizes))
        self.dnn = nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 128),
                                 nn.ReLU(), nn.Linear(128, 1, bias=False))
        for embedding in (self.user, self.item, *self.fields):  # DeepCTR's init_std
            nn.init.normal_(embedding.weight, std=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` float [B, 3 + F + L] as DeepCTR feeds it: user, item, length, fields, history."""
        x = x.long()
        n_fields = len(self.fields)
        user, item, length = x[:, 0], x[:, 1], x[:, 2]
        fields, history = x[:, 3:3 + n_fields], x[:, 3 + n_fields:]
        query = self.item(item).unsqueeze(1)
        keys = self.item(history)
        q = query.expand_as(keys)
        score = self.att(torch.cat([q, keys, q - keys, q * keys], dim=-1)).transpose(1, 2)
        mask = (torch.arange(keys.shape[1]) < length[:, None]).unsqueeze(1)
        pooled = torch.matmul(torch.where(mask, score, torch.zeros_like(score)), keys).squeeze(1)
        parts = [self.user(user), query.squeeze(1), pooled,
                 *(e(fields[:, i]) for i, e in enumerate(self.fields))]
        return self.dnn(torch.cat(parts, dim=1)).squeeze(1)


def reference_features(data: CtrData) -> tuple[np.ndarray, np.ndarray, int]:
    """DeepCTR-style inputs: one float matrix (user, item, length, fields, left-aligned history
    of item ids with 0 = padding), the click labels, and the item vocabulary size."""
    history = data.history[data.history_key].numpy()
    valid = history >= 0
    order = np.argsort(~valid, axis=1, kind="stable")  # valid entries first, in time order
    history = np.take_along_axis(history, order, 1)
    valid = np.take_along_axis(valid, order, 1)
    item_ids = data.item_vocab.numpy() + 1  # 0 is padding, 1 is "unseen in training"
    hist_ids = np.where(valid, item_ids[np.clip(history, 0, None)], 0)
    item = data.item.numpy()
    x = np.column_stack([data.user.numpy(), item_ids[item], valid.sum(1),
                         data.item_fields.numpy()[item], hist_ids]).astype(np.float32)
    return x, data.labels[:, 0].numpy(), int(item_ids.max()) + 1


def time_reference(data: CtrData, batch_size: int, epochs: int, seed: int = 0
                   ) -> tuple[float, float]:
    """(samples/s, test ctr AUC) of the DIN loop trained on the training days."""
    torch.manual_seed(seed)
    x, y, n_items = reference_features(data)
    model = DinReference(data.n_users, n_items, list(data.field_sizes))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(torch.from_numpy(x[data.train]),
                                      torch.from_numpy(y[data.train])),
                        batch_size=batch_size, shuffle=True)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            loss = F.binary_cross_entropy_with_logits(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        scores = torch.sigmoid(model(torch.from_numpy(x[data.test]))).numpy()
    return epochs * len(data.train) / seconds, auc(y[data.test], scores)


def _import_deepctr() -> Any:
    if "requests" not in sys.modules:
        try:
            import requests  # noqa: F401
        except ImportError:  # deepctr_torch imports it only for a version check over the network
            stub = types.ModuleType("requests")

            def _offline(*_: Any, **__: Any) -> Any:
                raise OSError("network disabled in bench perf")

            stub.get = _offline  # type: ignore[attr-defined]
            sys.modules["requests"] = stub
    import deepctr_torch.inputs as inputs
    import deepctr_torch.models as models

    return inputs, models


def time_deepctr(data: CtrData, batch_size: int, epochs: int) -> tuple[float, float] | None:
    """(samples/s, test ctr AUC) of DeepCTR-Torch's DIN, or None when it is not installed."""
    try:
        inputs, models = _import_deepctr()
    except ImportError:
        return None
    x, y, n_items = reference_features(data)
    length = data.history_length
    names = ["user", "item_id", "seq_length", *data.field_names]
    columns = [inputs.SparseFeat("user", data.n_users, embedding_dim=12),
               inputs.SparseFeat("item_id", n_items, embedding_dim=12),
               *(inputs.SparseFeat(n, s, embedding_dim=12)
                 for n, s in zip(data.field_names, data.field_sizes)),
               inputs.VarLenSparseFeat(inputs.SparseFeat("hist_item_id", n_items,
                                                         embedding_dim=12,
                                                         embedding_name="item_id"),
                                       maxlen=length, length_name="seq_length")]

    def frame(rows: np.ndarray) -> dict[str, np.ndarray]:
        out = {name: x[rows, i].astype(np.int64) for i, name in enumerate(names)}
        out["hist_item_id"] = x[rows, len(names):].astype(np.int64)
        return out

    model = models.DIN(columns, ["item_id"], device="cpu", seed=0)
    model.compile("adam", "binary_crossentropy")
    start = time.perf_counter()
    model.fit(frame(data.train), y[data.train], batch_size=batch_size, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    scores = model.predict(frame(data.test), batch_size=8192).reshape(-1)
    return epochs * len(data.train) / seconds, auc(y[data.test], scores)


# ------------------------------------------------------------------ the figure


def run(args: argparse.Namespace) -> int:
    dataset, vectors = _dataset(args)
    options = dict(CtrTask.defaults["default"])  # the task's public defaults, as bench run uses
    data = load(dataset, options)
    item_vectors = vectors[data.item_rows]
    print(f"log: {dataset.name}, {len(data.train)} training impressions, {len(data.test)} on the "
          f"evaluation day, history length {data.history_length}, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.threads} thread(s), image dim {item_vectors.shape[1]}")
    results: list[tuple[str, float, float]] = []
    with torch_threads(args.threads):
        for feature_set in ("dicm", "none"):
            config = CtrConfig.from_options(options, feature_set=feature_set,
                                              aggregator=args.aggregator, epochs=args.epochs,
                                              batch_size=args.batch_size, threads=args.threads)
            model = build_model(data, item_vectors, config, seed=0)
            stats = fit(model, data, data.train, config, seed=0)
            label = f"DICM {feature_set}" + (f"/{args.aggregator}" if feature_set == "dicm" else "")
            results.append((label, stats["samples_per_s"], evaluate(model, data)["ctr_auc"]))
        if not args.no_reference:
            results.append(("DIN loop (DeepCTR-style)",
                            *time_reference(data, args.batch_size, args.epochs)))
            deepctr = time_deepctr(data, args.batch_size, args.epochs)
            if deepctr is None:
                print("DeepCTR-Torch is not installed (pip install --no-deps "
                      "deepctr-torch==0.3.0); comparing with the DIN loop only")
            else:
                results.append(("DeepCTR-Torch DIN", *deepctr))
    reference = next((r[1] for r in results if r[0] == "DeepCTR-Torch DIN"),
                     next((r[1] for r in results if r[0].startswith("DIN loop")), None))
    print(f"{'model':28s} {'samples/s':>10s} {'vs ref':>7s} {'vs 9k':>6s} {'ctr AUC':>8s}")
    for label, speed, ctr_auc in results:
        ratio = f"{speed / reference:6.2f}x" if reference else "      -"
        print(f"{label:28s} {speed:10.0f} {ratio} {speed / DESIGN_REFERENCE:5.2f}x {ctr_auc:8.4f}")
    print("timings are wall-clock on this machine; other load on its cores inflates them")
    return 0
