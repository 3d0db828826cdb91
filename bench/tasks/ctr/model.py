"""DICM (Ge et al., CIKM 2018): Embedding&MLP over ID features plus image features of the ad and
of the user's clicked items, pooled by an aggregator; click, detail and ESMM conversion heads.

The image path is a separate module, :class:`ImageTower` (item index -> projected image vector),
so the AMS path can move it to parameter servers: the dense part (:meth:`DICM.dense`) only needs
the projected vectors of the batch's ad and history items.

Feature sets (what enters the MLP besides the IDs):
``none`` IDs only; ``ad`` + the ad's image; ``behavior`` + the pooled clicked images; ``dicm`` both.
In ``behavior`` the ad's image is not an MLP input, but image-queried attention may still use it
as its query (it weighs the history, it is not a feature of its own).

With the clicked images (``behavior``, ``dicm``), ``similarity`` adds one input: the cosine
similarity of the projected ad image and the mean projected clicked image, i.e. "does this ad
look like what the user clicked". An MLP learns such a product of two inputs poorly (Rendle et
al., 2020), and without it the model did not use image information that a training-free rule
(the share of a user's clicks in the ad's style) does use: on homestead the true style, scene
and warmth hidden in 256 noisy dimensions scored below IDs only; with it they score well above
(docs/ctr.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURE_SETS = ("none", "ad", "behavior", "dicm")
AGGREGATORS = ("concat", "sum", "max", "attentive", "mqap")
HEADS = ("ctr", "detail", "ctcvr")


def mlp(sizes: Sequence[int], last_activation: bool = False) -> nn.Sequential:
    """Linear layers with PReLU between them (and after the last one if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.PReLU())
    return nn.Sequential(*layers)


class ImageTower(nn.Module):
    """Frozen raw image vectors and a trainable projection: item index [...] -> [..., dim].

    ``projection`` maps raw vectors [..., D] to [..., dim] (a Linear by default, or an MLP such
    as AMS's 4096-256-64-12 with ``hidden=(256, 64)``); the table is a buffer, never trained.
    """

    def __init__(self, vectors: torch.Tensor, dim: int = 12, hidden: Sequence[int] = ()):
        super().__init__()
        self.register_buffer("table", vectors.float(), persistent=False)
        self.projection = mlp([vectors.shape[1], *hidden, dim])
        self.dim = dim

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.projection(self.table[index])


class AttentivePooling(nn.Module):
    """DIN-style attention: a small MLP scores [q, k, q-k, q*k] per history item; softmax over
    the valid (unmasked) items; weighted sum of the values. An empty history pools to zeros.

    The first layer is evaluated in its decomposed form, q (Wq + Wd) + k (Wk - Wd) + (q*k) Wp,
    so the query's share is computed once per impression instead of once per history item
    (the same function as the concatenation, a third of the work). The hidden activation is a
    sigmoid, as in DIN's reference code (PReLU's backward is ~10x slower on CPU here).
    """

    def __init__(self, query_dim: int, key_dim: int, hidden: int = 16):
        super().__init__()
        self.query = nn.Identity() if query_dim == key_dim else nn.Linear(query_dim, key_dim)
        self.first = nn.Linear(4 * key_dim, hidden)  # acts on [q, k, q-k, q*k]
        self.second = nn.Linear(hidden, 1)

    def weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        """Attention weights [B, L]: softmax over the unmasked items, 0 on padding."""
        q = self.query(query)
        w_q, w_k, w_d, w_p = self.first.weight.split(keys.shape[-1], dim=1)
        # history-major [L, B, h] layout: the per-impression query term broadcasts over the
        # outer dimension, which is several times faster on CPU than over the middle one
        keys_t = keys.transpose(0, 1)
        hidden = (F.linear(keys_t, w_k - w_d) + F.linear(q * keys_t, w_p.contiguous())
                  + F.linear(q, w_q + w_d, self.first.bias))
        scores = self.second(torch.sigmoid(hidden)).squeeze(-1).t()
        scores = scores.masked_fill(~mask, -1e9)
        return torch.softmax(scores, dim=1) * mask

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        return (self.weights(query, keys, mask).unsqueeze(-1) * keys).sum(1)


class Aggregator(nn.Module):
    """Pools history image vectors [B, L, d] with mask [B, L] into a fixed-size vector."""

    def __init__(self, kind: str, dim: int, length: int, id_dim: int):
        super().__init__()
        if kind not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {kind!r}; choose from {AGGREGATORS}")
        self.kind = kind
        self.out_dim = {"concat": dim * length, "mqap": 2 * dim}.get(kind, dim)
        if kind == "attentive":
            self.image_channel = AttentivePooling(dim, dim)
        if kind == "mqap":  # two channels, each with its own weights and its own query
            self.image_channel = AttentivePooling(dim, dim)
            self.id_channel = AttentivePooling(id_dim, dim)

    def forward(self, history: torch.Tensor, mask: torch.Tensor, ad_image: torch.Tensor,
                ad_id: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1)
        if self.kind == "concat":
            return (history * m).flatten(1)
        if self.kind == "sum":
            return (history * m).sum(1)
        if self.kind == "max":
            pooled = history.masked_fill(~m, -1e9).max(1).values
            return torch.where(mask.any(1, keepdim=True), pooled, torch.zeros_like(pooled))
        if self.kind == "attentive":
            return self.image_channel(ad_image, history, mask)
        return torch.cat([self.image_channel(ad_image, history, mask),
                          self.id_channel(ad_id, history, mask)], dim=1)


class DICM(nn.Module):
    """Embedding&MLP with image features; ``forward(batch)`` returns head logits.

    Inputs (from :meth:`bench.tasks.ctr.data.CtrData.batch`): ``user`` [B], ``item`` [B],
    ``history`` [B, L] item indices and ``mask`` [B, L]. ID features: user, item ID, the item's
    categorical fields and the mean of the history items' ID embeddings (the DICM baseline's
    behaviour IDs). Outputs: logits ``ctr``, ``detail`` and ``cvr`` (p_ctcvr = p_ctr * p_cvr).
    """

    def __init__(self, *, n_users: int, item_vocab: torch.Tensor, item_fields: torch.Tensor,
                 field_sizes: Sequence[int], history_length: int,
                 image_tower: nn.Module | None = None, feature_set: str = "dicm",
                 aggregator: str = "mqap", id_dim: int = 12, hidden: Sequence[int] = (200, 80),
                 similarity: bool = True, user_ad: bool = True):
        super().__init__()
        if feature_set not in FEATURE_SETS:
            raise ValueError(f"unknown feature set {feature_set!r}; choose from {FEATURE_SETS}")
        self.feature_set = feature_set
        self.use_ad = feature_set in ("ad", "dicm")
        self.use_behavior = feature_set in ("behavior", "dicm")
        if (self.use_ad or self.use_behavior) and image_tower is None:
            raise ValueError(f"feature set {feature_set!r} needs an image tower")
        self.image_tower = image_tower if feature_set != "none" else None
        self.register_buffer("item_vocab", item_vocab.long(), persistent=False)
        self.register_buffer("item_fields", item_fields.long(), persistent=False)
        self.user_embedding = nn.Embedding(n_users, id_dim)
        self.item_embedding = nn.Embedding(int(item_vocab.max()) + 1, id_dim)
        self.field_embeddings = nn.ModuleList(nn.Embedding(n, id_dim) for n in field_sizes)
        width = id_dim * (3 + len(field_sizes))
        if self.use_ad:
            width += image_tower.dim
        self.user_ad = None
        if self.use_ad and user_ad:  # the user's affinity to the ad image: u W a, one input
            self.user_ad = nn.Linear(image_tower.dim, id_dim, bias=False)
            width += 1
        self.aggregator = None
        self.similarity = similarity and self.use_behavior
        if self.use_behavior:
            self.aggregator = Aggregator(aggregator, image_tower.dim, history_length, id_dim)
            width += self.aggregator.out_dim + int(self.similarity)
        self.trunk = mlp([width, *hidden], last_activation=True)
        self.heads = nn.Linear(hidden[-1], 3)  # ctr, detail, cvr logits
        for embedding in (self.user_embedding, self.item_embedding, *self.field_embeddings):
            nn.init.normal_(embedding.weight, std=0.05)

    def images(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected image vectors of the ad [B, d] and history [B, L, d]: each distinct item of
        the batch goes through the image tower once."""
        items = torch.cat([batch["item"], batch["history"].flatten()])
        unique, inverse = torch.unique(items, return_inverse=True)
        vectors = self.image_tower(unique)[inverse]
        n = batch["item"].shape[0]
        return vectors[:n], vectors[n:].view(n, batch["history"].shape[1], -1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.image_tower is None:
            return self.dense(batch, None, None)
        return self.dense(batch, *self.images(batch))

    def dense(self, batch: dict[str, torch.Tensor], ad_image: torch.Tensor | None,
              history_images: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Everything but the image tower: IDs, aggregator, MLP and heads."""
        item, history, mask = batch["item"], batch["history"], batch["mask"]
        ad_id = self.item_embedding(self.item_vocab[item])
        history_ids = self.item_embedding(self.item_vocab[history]) * mask.unsqueeze(-1)
        history_mean = history_ids.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        fields = self.item_fields[item]
        user = self.user_embedding(batch["user"])
        parts = [user, ad_id, history_mean,
                 *(e(fields[:, i]) for i, e in enumerate(self.field_embeddings))]
        if self.use_ad:
            parts.append(ad_image)
        if self.user_ad is not None:
            parts.append((user * self.user_ad(ad_image)).sum(1, keepdim=True))
        if self.aggregator is not None:
            parts.append(self.aggregator(history_images, mask, ad_image, ad_id))
        if self.similarity:
            parts.append(profile_similarity(ad_image, history_images, mask))
        logits = self.heads(self.trunk(torch.cat(parts, dim=1)))
        return {"ctr": logits[:, 0], "detail": logits[:, 1], "cvr": logits[:, 2]}


def profile_similarity(ad_image: torch.Tensor, history_images: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """[B, 1] cosine similarity of the ad image [B, d] and the mean of the valid history images
    [B, L, d] (0 for an empty history)."""
    m = mask.unsqueeze(-1).to(history_images.dtype)
    profile = (history_images * m).sum(1) / m.sum(1).clamp(min=1)
    return F.cosine_similarity(ad_image, profile, dim=1, eps=1e-8).unsqueeze(1)


def probabilities(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """p_ctr, p_detail and ESMM's p_ctcvr = p_ctr * p_cvr."""
    ctr = torch.sigmoid(logits["ctr"])
    return {"ctr": ctr, "detail": torch.sigmoid(logits["detail"]),
            "ctcvr": ctr * torch.sigmoid(logits["cvr"])}


def loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Sum of the three losses on every impression: click, detail view, and (ESMM) conversion
    through p_ctcvr, so the conversion tower learns on the whole impression space."""
    click, detail, conversion = labels.unbind(1)
    ctr_loss = F.binary_cross_entropy_with_logits(logits["ctr"], click)
    detail_loss = F.binary_cross_entropy_with_logits(logits["detail"], detail)
    log_ctcvr = F.logsigmoid(logits["ctr"]) + F.logsigmoid(logits["cvr"])
    log_not = torch.log1p(-log_ctcvr.exp().clamp(max=1 - 1e-6))
    ctcvr_loss = -(conversion * log_ctcvr + (1 - conversion) * log_not).mean()
    return ctr_loss + detail_loss + ctcvr_loss
