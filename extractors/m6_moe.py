"""``m6_moe``: a small multimodal sparse mixture-of-experts model (the M6 stand-in), image + title.

In the reference study M6, a sparse-MoE multimodal transformer trained contrastively on the
platform's data, embedded each content's cover image together with its title into 32 dimensions
and led on style consistency, because the title names the style. This is a small, honest
version of it, in one file:

* **tokenizer**: lower-cased word split, vocabulary built from the training titles, with
  ``[PAD] [UNK] [CLS] [MASK]``; unseen words become ``[UNK]``, an empty title is all padding.
* **image tower**: the shared ResNet (``bench.train.backbones.build_backbone``); the spatial positions
  of its last feature map become the image tokens (2 x 2 at 32 px with the ``strided`` stem of
  the default profile, the same backbone as ``moco_v2`` and ``swav``; 4 x 4 with ``small``).
* **text tower**: word embeddings plus positions.
* **fusion**: pre-norm transformer blocks over ``[CLS] + image tokens + title tokens`` whose
  feed-forward layer is a sparse mixture of experts: the gate scores N experts per token, keeps
  the top k, takes a softmax over the kept k gate values and sums those experts' outputs with
  these weights. Each expert runs only on the tokens dispatched to it (by index). A capacity
  factor bounds the tokens per expert during training; assignments over capacity are dropped
  (a token whose experts are all full passes through on the residual) and their share is
  reported. The Switch/GShard auxiliary loss ``N * sum_i f_i * P_i`` keeps the load balanced.
* **training**: passes of the same blocks share one image-tower forward: image only, title
  only, and image + title (fused). InfoNCE (both directions over the batch) aligns image with
  title, fused with image (weight ``fused_image_weight``) and fused with title, so the three
  live in one space. The title and fused passes each lose a random share of the words
  (``word_dropout``), independently: when the fused pass misses a word the title view has (a
  style word, say), it learns to read that information from the image, so a title that does not
  name the style no longer pulls the fused vector away from what the image shows. A fourth pass,
  image + title with a share of the words replaced by ``[MASK]``, predicts the hidden words with
  the word embeddings as output weights (tied): words that go with the same images, such as a
  style's synonyms, get similar embeddings. Images get random resized crops and flips (no colour
  jitter: colour is style). AdamW with warm-up and cosine decay over ``epochs`` x steps;
  ``max_seconds`` is only a safety stop (``bench.train.loop.SafetyStop``): a cut training is
  reported (``fit_cut``), its checkpoint stays unfinished and the next run resumes it.
* **embedding**: the fused pass's ``[CLS]`` through a linear head, L2-normalised, 32-d by default
  (``m6_moe:dim=64``). ``m6_moe_image_only`` (or ``m6_moe:image_only=1``) uses the same trained
  weights with no title tokens, so a table shows what the title adds.

At inference there is no capacity limit, so an item's vector never depends on the other items in
its batch. Training runs on the suite's one loop (``bench.train.loop.fit_loop``): this file
supplies the loss of a batch (image + title passes), AdamW with its schedule, and hooks that
reset and collect the expert statistics per epoch; the loop brings mixed precision, the
checkpoint after every epoch (key from config, data and code version; atomic; ``weights_only``
loading; resume through ``restore_checkpoint``, which moves an unusable file aside to
``*.corrupt`` and restarts) and the safety stop.
``m6_moe`` and ``m6_moe_image_only`` share one checkpoint, so a run with both trains once.
``ctx.log_dir / "train_log.json"`` holds per-epoch losses, wall time, tokens per expert for each
MoE layer at the end of training (``expert_load``: layers x experts) and the dropped share.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.cache import write_json
from bench.core.code import source_digest
from bench.core.extractor import FitContext
from bench.core.registry import extractor
from bench.train.augment import ViewSpec, augment, to_unit
from bench.train.backbones import (
    amp_context,
    batched_images,
    build_backbone,
    images_to_tensor,
    pick_device,
)
from bench.train.checkpoint import (
    CheckpointError,
    checkpoint_key,
    checkpoint_path,
    restore_checkpoint,
)
from bench.train.loop import (
    Checkpointing,
    Hooks,
    LoopState,
    Plan,
    StepInfo,
    fit_loop,
    seeded_epochs,
)
from bench.train.options import resolve_options
from bench.train.ssl import with_precision

NAME = "m6_moe"
VERSION = "3"  # bump when training or the checkpoint's content changes meaning (3: steps only)
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[MASK]")
PAD, UNK, CLS, MASK = range(len(SPECIALS))

_COMMON = dict(arch="resnet18", stem="small", dim=32, heads=4, layers=2, experts=4, top_k=2,
               capacity_factor=1.25, max_words=16, temperature=0.2, mask_prob=0.3,
               mlm_weight=0.5, aux_weight=0.05, lr=2e-3, weight_decay=0.05, warmup=0.05,
               crop_min_scale=0.6, word_dropout=0.2, fused_image_weight=2.0, seed=0, device="")
DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": _COMMON | dict(width=8, image_size=32, d_model=32, heads=2, expert_hidden=64,
                            epochs=2, batch_size=64, max_seconds=0.0),
    "default": _COMMON | dict(width=32, stem="strided", image_size=32, d_model=64,
                              expert_hidden=128, epochs=12, batch_size=128, max_seconds=400.0),
    "full": _COMMON | dict(width=64, image_size=64, d_model=256, heads=8, layers=4, experts=8,
                           expert_hidden=512, epochs=60, batch_size=256, lr=1e-3,
                           max_seconds=1800.0),
}
# Options that do not change a finished training (kept out of the checkpoint key).
NOT_TRAINED = ("device", "max_seconds")


log = logging.getLogger(f"bench.extractors.{NAME}").info


# ----------------------------------------------------------------------------- tokenizer


def words(title: str) -> list[str]:
    """Lower-cased alphanumeric words: the simplest split that survives punctuation."""
    return re.findall(r"[a-z0-9]+", str(title).lower())


@dataclass
class Tokenizer:
    """Word-level vocabulary; ids 0-3 are the special tokens, unseen words map to ``[UNK]``."""

    vocab: list[str]

    def __post_init__(self) -> None:
        self.index = {word: i for i, word in enumerate(self.vocab)}

    @classmethod
    def build(cls, titles: Sequence[str], min_count: int = 1) -> Tokenizer:
        counts = Counter(word for title in titles for word in words(title))
        kept = sorted(w for w, c in counts.items() if c >= min_count and w not in SPECIALS)
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, titles: Sequence[str], max_words: int) -> Tensor:
        """Token ids [n, max_words], right-padded with ``[PAD]`` (an empty title is all padding)."""
        ids = torch.full((len(titles), max_words), PAD, dtype=torch.long)
        for row, title in enumerate(titles):
            tokens = [self.index.get(w, UNK) for w in words(title)[:max_words]]
            if tokens:
                ids[row, :len(tokens)] = torch.tensor(tokens)
        return ids


# ----------------------------------------------------------------------------- sparse MoE


class Expert(nn.Module):
    """One feed-forward expert (the MLP of a transformer block)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class Routing:
    """The gate's decision for T tokens: k experts each, their weights, which fit in capacity."""

    experts: Tensor  # long [T, k], distinct per token
    weights: Tensor  # float [T, k], softmax over the kept k gate values (rows sum to 1)
    keep: Tensor  # bool [T, k], False where the expert was over capacity
    probs: Tensor  # float [T, N], softmax over all N gate values (for the auxiliary loss)


def load_balancing_loss(probs: Tensor, experts: Tensor) -> Tensor:
    """Switch/GShard auxiliary loss ``N * sum_i f_i * P_i``.

    ``f_i`` is the share of the T*k token-to-expert assignments that chose expert i (not
    differentiable), ``P_i`` the mean gate probability of expert i (differentiable). It equals 1
    for a uniform router or a perfectly balanced one and grows to N when one expert takes all.
    """
    n_experts = probs.shape[-1]
    share = torch.bincount(experts.flatten(), minlength=n_experts).to(probs.dtype)
    share = share / experts.numel()
    return n_experts * torch.sum(share * probs.mean(0))


def capacity_mask(experts: Tensor, n_experts: int, capacity: int) -> Tensor:
    """bool [T, k]: True for assignments within each expert's capacity.

    First choices are served before second choices (GShard), then tokens in order.
    """
    tokens, k = experts.shape
    order = experts.t().reshape(-1)  # choice-major: all first choices, then all second ...
    one_hot = F.one_hot(order, n_experts)
    position = (one_hot.cumsum(0) - 1).gather(1, order[:, None]).squeeze(1)
    return (position < capacity).view(k, tokens).t()


class SparseMoE(nn.Module):
    """Top-k gated experts with capacity; only the selected experts run for a token.

    ``load`` (tokens per expert), ``routed`` and ``dropped`` (assignments) accumulate while the
    module is in training mode, until ``reset_stats``.
    """

    def __init__(self, d_model: int, hidden: int, n_experts: int, top_k: int,
                 capacity_factor: float | None):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, {n_experts}], got {top_k}")
        self.top_k, self.n_experts, self.capacity_factor = top_k, n_experts, capacity_factor
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(d_model, hidden) for _ in range(n_experts))
        self.register_buffer("load", torch.zeros(n_experts, dtype=torch.long), persistent=False)
        self.register_buffer("routed", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("dropped", torch.zeros((), dtype=torch.long), persistent=False)

    def capacity(self, tokens: int) -> int | None:
        """Slots per expert in training; None (unlimited) at inference or without a factor."""
        if not self.training or self.capacity_factor is None:
            return None
        return max(1, math.ceil(self.capacity_factor * tokens * self.top_k / self.n_experts))

    def route(self, x: Tensor) -> Routing:
        logits = self.gate(x).float()
        top_logits, experts = logits.topk(self.top_k, dim=-1)
        capacity = self.capacity(len(x))
        keep = (torch.ones_like(experts, dtype=torch.bool) if capacity is None
                else capacity_mask(experts, self.n_experts, capacity))
        return Routing(experts, top_logits.softmax(-1), keep, logits.softmax(-1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [T, d] -> (y [T, d], auxiliary loss); y is 0 for a token whose experts were full."""
        routing = self.route(x)
        out = torch.zeros_like(x)
        for index, expert in enumerate(self.experts):
            token, slot = torch.nonzero((routing.experts == index) & routing.keep, as_tuple=True)
            if len(token):
                weight = routing.weights[token, slot].unsqueeze(1)
                out.index_add_(0, token, (weight * expert(x[token])).to(out.dtype))
        if self.training:
            with torch.no_grad():
                kept = routing.experts[routing.keep]
                self.load += torch.bincount(kept, minlength=self.n_experts)
                self.routed += routing.experts.numel()
                self.dropped += routing.experts.numel() - kept.numel()
        return out, load_balancing_loss(routing.probs, routing.experts)

    def reset_stats(self) -> None:
        self.load.zero_()
        self.routed.zero_()
        self.dropped.zero_()


class MoEBlock(nn.Module):
    """Pre-norm transformer block: self-attention, then the sparse MoE feed-forward layer."""

    def __init__(self, d_model: int, heads: int, moe: SparseMoE):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.moe = moe

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, S, d], valid bool [B, S]; padding is never attended to nor routed."""
        h = self.norm1(x)
        x = x + self.attention(h, h, h, key_padding_mask=~valid, need_weights=False)[0]
        moe_out, aux = self.moe(self.norm2(x)[valid])
        return x.index_put((valid,), x[valid] + moe_out), aux


# ----------------------------------------------------------------------------- the model


class ImageTower(nn.Module):
    """The shared ResNet; its last feature map's spatial positions become tokens."""

    def __init__(self, arch: str, width: int, stem: str, image_size: int, d_model: int):
        super().__init__()
        self.backbone = build_backbone(arch, width, stem=stem)
        self.proj = nn.Linear(self.backbone.feature_dim, d_model)
        self.backbone.eval()  # a probe forward must not touch the batch-norm statistics
        with torch.no_grad():
            grid = self.feature_map(torch.zeros(1, 3, image_size, image_size)).shape[-1]
        self.backbone.train()
        self.n_tokens = grid * grid

    def feature_map(self, x: Tensor) -> Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images [B, 3, H, W] -> tokens [B, P, d]."""
        return self.proj(self.feature_map(x).flatten(2).transpose(1, 2))


class M6MoE(nn.Module):
    """Image tower + text embeddings + MoE transformer blocks + a ``dim``-d head."""

    def __init__(self, vocab_size: int, cfg: dict[str, Any]):
        super().__init__()
        d = cfg["d_model"]
        self.image = ImageTower(cfg["arch"], cfg["width"], cfg["stem"], cfg["image_size"], d)
        self.words = nn.Embedding(vocab_size, d, padding_idx=PAD)
        self.image_pos = nn.Parameter(torch.randn(self.image.n_tokens, d) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(cfg["max_words"], d) * 0.02)
        self.kind = nn.Embedding(3, d)  # 0: [CLS], 1: image token, 2: title token
        for table in (self.words, self.kind):  # small, as in BERT: the tied output stays sane
            nn.init.normal_(table.weight, std=0.02)
        with torch.no_grad():
            self.words.weight[PAD].zero_()
        self.blocks = nn.ModuleList(
            MoEBlock(d, cfg["heads"], SparseMoE(d, cfg["expert_hidden"], cfg["experts"],
                                                cfg["top_k"], cfg["capacity_factor"]))
            for _ in range(cfg["layers"]))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg["dim"])
        self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))  # output tied to ``words``

    def image_tokens(self, images: Tensor) -> Tensor:
        return self.image(images) + self.image_pos + self.kind.weight[1]

    def text_tokens(self, ids: Tensor) -> Tensor:
        return self.words(ids) + self.text_pos[:ids.shape[1]] + self.kind.weight[2]

    def encode(self, image_tokens: Tensor | None, ids: Tensor | None) -> tuple[Tensor, Tensor]:
        """Run the blocks over ``[CLS] + image tokens + title tokens`` (either part may be None).

        Returns the final states [B, S, d] and the summed auxiliary loss of the MoE layers.
        """
        reference = image_tokens if image_tokens is not None else ids
        batch = reference.shape[0]
        cls = (self.words.weight[CLS] + self.kind.weight[0]).expand(batch, 1, -1)
        parts, valid = [cls], [torch.ones(batch, 1, dtype=torch.bool, device=reference.device)]
        if image_tokens is not None:
            parts.append(image_tokens)
            valid.append(torch.ones(image_tokens.shape[:2], dtype=torch.bool,
                                    device=reference.device))
        if ids is not None:
            parts.append(self.text_tokens(ids))
            valid.append(ids != PAD)
        x, mask = torch.cat(parts, 1), torch.cat(valid, 1)
        # on the CPU the blocks run in fp32 even under bf16 autocast: at these small widths
        # the casts cost more than bf16 saves (bench perf train --precisions: the whole step
        # in bf16 ran at 0.7x fp32; only the image tower in bf16, at 1.39x)
        with torch.autocast("cpu", enabled=False):
            x = x.float()
            aux = x.new_zeros(())
            for block in self.blocks:
                x, layer_aux = block(x, mask)
                aux = aux + layer_aux
            return self.norm(x), aux

    def project(self, states: Tensor) -> Tensor:
        """The ``[CLS]`` state -> L2-normalised embedding [B, dim]."""
        return F.normalize(self.head(states[:, 0]).float(), dim=-1)

    def embed(self, images: Tensor, ids: Tensor | None) -> Tensor:
        """Fused embedding of images and titles; ``ids=None`` embeds the image alone."""
        states, _ = self.encode(self.image_tokens(images), ids)
        return self.project(states)

    def word_logits(self, states: Tensor) -> Tensor:
        """Masked-word prediction with the input embeddings as output weights (tied, as in
        BERT): words predicted from the same images, such as a style's synonyms, move together."""
        return states @ self.words.weight.t() + self.mlm_bias

    def moe_layers(self) -> list[SparseMoE]:
        return [block.moe for block in self.blocks]


# ----------------------------------------------------------------------------- training


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE over the batch: row i of ``a`` matches row i of ``b`` (CLIP-style)."""
    logits = a @ b.t() / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def mask_words(ids: Tensor, prob: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Replace a share of the title words by ``[MASK]``; targets are -100 except there."""
    chosen = (torch.rand(ids.shape, generator=generator) < prob).to(ids.device) & (ids != PAD)
    return ids.masked_fill(chosen, MASK), ids.masked_fill(~chosen, -100)


def drop_words(ids: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    """Remove a share of the title words (as padding): a text augmentation that keeps the
    contrastive passes from pairing an image with one title's incidental filler and typos."""
    if prob <= 0:
        return ids
    dropped = (torch.rand(ids.shape, generator=generator) < prob).to(ids.device)
    return ids.masked_fill(dropped, PAD)


def training_losses(model: M6MoE, images: Tensor, ids: Tensor, cfg: dict[str, Any],
                    generator: torch.Generator) -> dict[str, Tensor]:
    """Contrastive (image/title/fused), masked-word and load-balancing losses of one batch."""
    image_tokens = model.image_tokens(images)
    image_states, aux_image = model.encode(image_tokens, None)
    text_states, aux_text = model.encode(None, drop_words(ids, cfg["word_dropout"], generator))
    # independent drops: when the fused pass misses a word the title view has (a style word),
    # matching the title view teaches it to read that information from the image instead
    fused_states, aux_fused = model.encode(
        image_tokens, drop_words(ids, cfg["word_dropout"], generator))
    z_image, z_text, z_fused = (model.project(s)
                                for s in (image_states, text_states, fused_states))
    t, w = cfg["temperature"], cfg["fused_image_weight"]
    itc = (info_nce(z_image, z_text, t) + w * info_nce(z_fused, z_image, t)
           + info_nce(z_fused, z_text, t)) / (2 + w)
    masked, targets = mask_words(ids, cfg["mask_prob"], generator)
    mlm, aux, passes = itc.new_zeros(()), aux_image + aux_text + aux_fused, 3
    if cfg["mlm_weight"] > 0 and (targets != -100).any():
        masked_states, aux_masked = model.encode(image_tokens, masked)
        word_states = masked_states[:, 1 + image_tokens.shape[1]:]
        mlm = F.cross_entropy(model.word_logits(word_states).flatten(0, 1).float(),
                              targets.flatten())
        aux, passes = aux + aux_masked, 4
    aux = aux / (passes * len(model.blocks))
    total = itc + cfg["mlm_weight"] * mlm + cfg["aux_weight"] * aux
    return {"loss": total, "itc": itc, "mlm": mlm, "aux": aux}


def expert_stats(model: M6MoE) -> dict[str, Any]:
    """Tokens per expert (layers x experts) since the last reset, and the dropped share."""
    layers = model.moe_layers()
    load = [layer.load.tolist() for layer in layers]
    routed = sum(int(layer.routed) for layer in layers)
    dropped = sum(int(layer.dropped) for layer in layers)
    return {"expert_load": load,
            "largest_expert_share": [max(c) / sum(c) if sum(c) else 0.0 for c in load],
            "idle_experts": sum(c == 0 for counts in load for c in counts),
            "dropped_share": dropped / routed if routed else 0.0,
            "dropped_share_per_layer": [int(m.dropped) / int(m.routed) if int(m.routed) else 0.0
                                        for m in layers]}


HISTORY = ("loss", "itc_loss", "mlm_loss", "aux_loss", "dropped_share_per_epoch")


def learning_rate(cfg: dict[str, Any], done: float) -> float:
    """Linear warm-up over the first ``warmup`` share of the budget, then cosine to zero."""
    warmup = max(cfg["warmup"], 1e-8)
    if done < warmup:
        return cfg["lr"] * (done + 1e-3) / warmup
    return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, (done - warmup) / (1 - warmup))))


def train(model: M6MoE, optimizer: torch.optim.Optimizer, images: np.ndarray, ids: Tensor,
          cfg: dict[str, Any], *, path: Path, key: str, vocab: list[str], device: torch.device,
          state: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train with the suite's loop (``bench.train.loop.fit_loop``), or resume from ``state`` (a
    checkpoint of an unfinished run), for ``epochs``, or until the ``max_seconds`` safety stop
    ends this session (then the log's ``cut`` says so and the checkpoint stays unfinished); a
    checkpoint after every epoch. Returns the training log."""
    model.to(device).train()
    n, batch = len(images), min(cfg["batch_size"], len(images))
    plan = Plan(cfg["epochs"], max(1, n // batch), batch, max_seconds=cfg["max_seconds"])
    total_steps = plan.total_steps
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    ids = ids.to(device)
    view = ViewSpec(size=cfg["image_size"], min_scale=cfg["crop_min_scale"], cj_prob=0.0,
                    gray=0.0)
    train_log: dict[str, Any] = {}

    def step_loss(index: Tensor, info: StepInfo) -> dict[str, Tensor]:
        x = augment(to_unit(data[index]), view, info.generator)
        losses = training_losses(model, x, ids[index], cfg, info.cpu_generator)
        return {"loss": losses["loss"], "itc_loss": losses["itc"], "mlm_loss": losses["mlm"],
                "aux_loss": losses["aux"]}

    def on_epoch_start(epoch: int) -> None:
        for layer in model.moe_layers():
            layer.reset_stats()

    def on_epoch_end(epoch: int, loop: LoopState) -> None:
        stats = expert_stats(model)
        loop.history.setdefault("dropped_share_per_epoch", []).append(stats["dropped_share"])
        train_log.clear()
        train_log.update({**{name: loop.history[name] for name in HISTORY},
                          "wall_s": loop.wall_s, "epochs_run": loop.epoch,
                          "stopped_by": loop.stopped_by, "cut": loop.cut, "n_train": n,
                          "vocab_size": len(vocab), "images_per_s": loop.session_images_per_s,
                          "device": str(device), **stats})

    resumed = None
    if state is not None:
        resumed = LoopState.resumed(state, {name: state["log"][name] for name in HISTORY},
                                    plan.steps_per_epoch)
    fit_loop(model, optimizer, step_loss, plan, name=NAME, device=device,
             lr_at=lambda step: learning_rate(cfg, step / total_steps),
             shuffle=seeded_epochs(n, cfg["seed"], device),
             checkpoint=Checkpointing(path, key, NAME, extra=lambda loop: {
                 "version": VERSION, "vocab": vocab, "log": dict(train_log)}),
             resumed=resumed, hooks=Hooks(on_epoch_start, on_epoch_end), progress=progress,
             precision=cfg.get("precision"))
    model.eval()
    return train_log


def check_vocabulary(vocab: list[str]):
    """A ``restore_checkpoint`` check: the checkpoint is an m6_moe one of this vocabulary."""

    def check(state: dict[str, Any]) -> None:
        if list(state.get("vocab", [])) != vocab or "log" not in state:
            raise CheckpointError(f"checkpoint of key {state.get('key')!r} is not an {NAME} "
                                  "checkpoint of this vocabulary")

    return check


# ----------------------------------------------------------------------------- the extractor


def training_rows(dataset) -> np.ndarray:
    """Content covers of the train split that have a non-empty title."""
    rows = dataset.rows(role="content", split="train")
    titled = np.array([bool(words(t)) for t in dataset.titles(rows)], dtype=bool)
    return rows[titled] if len(rows) else rows


class M6MoEEmbedder:
    """Fits (or loads) the shared model, then embeds image + title (or the image alone). It
    has no ``backbone()``: ``M6MoEExtractor`` adds it; the image-only variant does not."""

    def __init__(self, options: dict[str, Any], image_only: bool = False, name: str = NAME,
                 batch_size: int = 256):
        self.device = pick_device(options.get("device") or None)
        self.options = with_precision(options, self.device)
        self.image_only, self.name, self.batch_size = image_only, name, batch_size
        self.dim = int(options["dim"])
        self.image_size = int(options["image_size"])
        self.modalities = ("image",) if image_only else ("image", "text")
        self.model: M6MoE | None = None
        self.tokenizer: Tokenizer | None = None
        self.train_log: dict[str, Any] = {}

    def train_config(self) -> dict[str, Any]:
        """What the trained weights depend on (shared by the fused and image-only variants)."""
        return {k: v for k, v in self.options.items() if k not in NOT_TRAINED}

    def config(self) -> dict[str, Any]:
        return {**self.train_config(), "image_only": self.image_only, "version": VERSION,
                "source": source_digest(M6MoEExtractor)}

    @property
    def fit_cut(self) -> str | None:
        """Why the last ``fit`` stopped before its epochs (the safety stop), else None."""
        return self.train_log.get("cut")

    def checkpoint_path(self, dataset, ctx: FitContext) -> tuple[Path, str]:
        key = checkpoint_key(NAME, {**self.train_config(), "version": VERSION,
                                    "source": source_digest(M6MoEExtractor)},
                             dataset.fingerprint, len(training_rows(dataset)))
        return checkpoint_path(ctx.cache, NAME, key), key

    def fit(self, dataset, ctx: FitContext) -> None:
        """Load the finished checkpoint for this config and data, else train (or resume)."""
        rows = training_rows(dataset)
        if len(rows) < 2:
            raise ValueError(f"{NAME} needs titled content covers in the train split; dataset "
                             f"{dataset.name!r} has {len(rows)}")
        titles = dataset.titles(rows)
        self.tokenizer = Tokenizer.build(titles)
        torch.manual_seed(self.options["seed"])
        self.model = M6MoE(len(self.tokenizer), self.options).to(self.device)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.options["lr"],
                                      weight_decay=self.options["weight_decay"])
        path, key = self.checkpoint_path(dataset, ctx)
        state = restore_checkpoint(path, key, self.model, optimizer,
                                   check=check_vocabulary(self.tokenizer.vocab))
        cached = state is not None and bool(state["done"])
        if cached:
            self.train_log = dict(state["log"])
            log(f"{NAME}: trained weights from cache {path.name}")
        else:
            log(f"{NAME}: training on {len(rows)} titled covers, vocabulary "
                f"{len(self.tokenizer)} words, device {self.device}")
            ids = self.tokenizer.encode(titles, self.options["max_words"])
            self.train_log = train(self.model, optimizer, dataset.images(rows), ids,
                                   self.options, path=path, key=key,
                                   vocab=self.tokenizer.vocab, device=self.device, state=state,
                                   progress=ctx.progress)
            losses = self.train_log["loss"]
            log(f"{NAME}: {len(losses)} epochs in {self.train_log['wall_s']:.1f} s, loss "
                f"{losses[0]:.3f} -> {losses[-1]:.3f}, dropped share "
                f"{self.train_log['dropped_share']:.3f}, largest expert share "
                f"{max(self.train_log['largest_expert_share']):.3f}")
            if self.train_log.get("cut"):
                log(self.train_log["cut"])
        self.model.to(self.device).eval()
        if ctx.log_dir is not None:
            write_json(Path(ctx.log_dir) / "train_log.json",
                       {**self.train_log, "extractor": self.name, "key": key, "cached": cached,
                        "checkpoint": str(path), "config": self.train_config()})

    @torch.no_grad()
    def embed(self, dataset, rows: np.ndarray) -> np.ndarray:
        """float32 [n, dim]; no capacity limit here, so a vector never depends on its batch."""
        if self.model is None or self.tokenizer is None:
            raise RuntimeError(f"{self.name}: call fit(dataset, ctx) before embed")
        self.model.eval()
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        with amp_context(self.device):
            images = batched_images(dataset, rows, self.batch_size)  # streamed for folders
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                x = images_to_tensor(next(images), self.image_size, self.device)
                ids = None if self.image_only else self.tokenizer.encode(
                    dataset.titles(batch), self.options["max_words"]).to(self.device)
                out[start:start + len(batch)] = self.model.embed(x, ids).float().cpu().numpy()
        return out


class M6MoEExtractor(M6MoEEmbedder):
    """The fused extractor, and a ``BackboneExtractor``: its image tower can be fine-tuned."""

    def backbone(self) -> nn.Module:
        """The image tower's ResNet only (images -> pooled features), for fine-tuning tasks;
        the text tower and the MoE blocks are not part of it. Trained after ``fit``."""
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit(dataset, ctx) before backbone()")
        return self.model.image.backbone

    def preprocess(self, images: np.ndarray) -> Tensor:
        """uint8 NHWC images -> the normalised tensor ``backbone()`` expects."""
        return images_to_tensor(images, self.image_size, self.device)


class M6MoEImageOnly(M6MoEEmbedder):
    """The same trained model embedding the image alone. It offers no ``backbone()`` (so it is
    no ``BackboneExtractor``): its image tower is ``m6_moe``'s, so the fine-tuning tasks report
    it once, under ``m6_moe``."""


def _make(options: dict[str, str], profile, image_only: bool) -> M6MoEEmbedder:
    resolved = resolve_options(NAME, DEFAULTS, profile, options, extra=("image_only",))
    flag = str(resolved.pop("image_only", "0")).lower()
    if flag not in ("0", "1", "true", "false", "yes", "no"):
        raise ValueError(f"{NAME}: option image_only expects 0 or 1, got {flag!r}")
    image_only = image_only or flag in ("1", "true", "yes")
    base = f"{NAME}_image_only" if image_only else NAME
    given = {k: v for k, v in options.items() if k != "image_only"}
    suffix = ",".join(f"{k}={v}" for k, v in sorted(given.items()))
    kind = M6MoEImageOnly if image_only else M6MoEExtractor
    return kind(resolved, image_only=image_only, name=f"{base}:{suffix}" if suffix else base,
                batch_size=profile.embed_batch_size)


@extractor(NAME)
def make_m6_moe(options: dict[str, str], profile) -> M6MoEExtractor:
    """Image + title, 32-d (``dim=``); ``image_only=1`` embeds without the title."""
    return _make(options, profile, image_only=False)


@extractor(f"{NAME}_image_only")
def make_m6_moe_image_only(options: dict[str, str], profile) -> M6MoEEmbedder:
    """The same trained model (shared checkpoint) embedding the image alone."""
    return _make(options, profile, image_only=True)
