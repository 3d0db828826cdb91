"""The dataset contract every dataset plugin returns, and the columns tasks look for.

A dataset is one table of items (one row per image) plus an image source and optional behaviour
logs. Tasks select rows by the optional ``role`` column (``content``, ``product``, ``query``) and
by ``split`` (``pretrain``, ``train``, ``test``); a task that needs a column the table lacks is
skipped with a stated reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

SPLITS = ("pretrain", "train", "test")
ROLES = ("content", "product", "query")
LABEL_COLUMNS = ("style", "scene", "category", "coarse_category", "identity")
OPTIONAL_COLUMNS = ("split", "role", "title", *LABEL_COLUMNS, "publish_day")

ImageSource = Callable[[np.ndarray], np.ndarray]
"""Maps row positions (int array) to uint8 images of shape [n, H, W, 3]."""


class DatasetError(ValueError):
    """Bad dataset input; the message names the file, column, id and count."""


class Simulator(Protocol):
    """The true user model a generated log was drawn from (homestead's ``UserModel``); real
    data has none. Users and items are positions into ``user_ids`` and ``item_ids``; arrays
    broadcast against each other. ``probabilities`` gives the true click, detail and
    conversion probabilities (0 for an item not published by ``day``); ``score`` the
    noise-free logit and ``outcomes`` the outcomes of noisy logits given three uniforms each
    (draws shared across arms); ``exposure_logits`` the logging policy (docs/online.md)."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    publish_day: np.ndarray
    noise_sd: float

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray: ...

    def outcomes(self, noisy_score: np.ndarray, uniforms: tuple[np.ndarray, np.ndarray,
                 np.ndarray]) -> dict[str, np.ndarray]: ...

    def probabilities(self, users: np.ndarray, items: np.ndarray,
                      day: int | None = None) -> dict[str, np.ndarray]: ...

    def exposure_logits(self, items: np.ndarray, day: int) -> np.ndarray: ...


class ImageReader(Protocol):
    """Opens one row's image as a PIL image at its own resolution (in a DataLoader worker).

    Datasets whose images live in files (``folder``) give one, so extractors preprocess the
    original pixels at their own resolution; in-memory datasets get an ``ArrayReader``.
    ``label(row)`` says which item a failure is about (id, path); ``source`` where it comes from.
    """

    source: str

    def open(self, row: int) -> Any: ...

    def label(self, row: int) -> str: ...


@dataclass
class Dataset:
    """Items (``table``, row order is the canonical order), their images and optional logs.

    ``table`` always has a unique string ``id`` column and a ``split`` column; other columns are
    optional (see ``OPTIONAL_COLUMNS``). ``logs`` holds behaviour tables for the ``ctr`` task,
    e.g. ``logs["impressions"]`` with user_id, item_id, day, click, detail, conversion.
    """

    name: str
    table: pd.DataFrame
    image_source: ImageSource
    image_size: int
    fingerprint: str
    logs: dict[str, pd.DataFrame] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    # ground truth the items were generated from (``id`` plus latent columns: categorical
    # strings or numbers, missing where a latent does not apply), for reference extractors
    # such as the known-answer ladder; tasks never read it. None for real data.
    latents: pd.DataFrame | None = None
    reader: ImageReader | None = None
    """Opens images at full resolution (files); None: the images are ``image_source``'s."""
    simulator: Simulator | None = None
    """The true user model behind ``logs`` (generated worlds); None for real data: the online
    task is then skipped."""

    def __post_init__(self) -> None:
        self.table = self.table.reset_index(drop=True)
        if "id" not in self.table.columns:
            raise DatasetError(f"dataset {self.name!r}: the item table has no 'id' column")
        self.table["id"] = self.table["id"].astype(str)
        duplicated = self.table["id"][self.table["id"].duplicated()]
        if len(duplicated):
            raise DatasetError(
                f"dataset {self.name!r}: {len(duplicated)} duplicate ids, e.g. {duplicated.iloc[0]!r}"
            )
        if "split" not in self.table.columns:
            self.table["split"] = "test"
        unknown = sorted(set(self.table["split"]) - set(SPLITS))
        if unknown:
            raise DatasetError(f"dataset {self.name!r}: unknown split values {unknown}; use {SPLITS}")
        self._position = pd.Index(self.table["id"])
        if self.latents is not None:
            self.latents = self._aligned_latents(self.latents)

    def _aligned_latents(self, latents: pd.DataFrame) -> pd.DataFrame:
        """The latents in the table's row order; every id needs exactly one row."""
        if "id" not in latents.columns:
            raise DatasetError(f"dataset {self.name!r}: the latents table has no 'id' column")
        latents = latents.assign(id=latents["id"].astype(str)).set_index("id")
        missing = self.table["id"][~self.table["id"].isin(latents.index)]
        if len(missing) or latents.index.duplicated().any():
            raise DatasetError(f"dataset {self.name!r}: latents must hold each item id once; "
                               f"{len(missing)} missing, e.g. {missing.iloc[0] if len(missing) else None!r}")
        return latents.loc[self.table["id"]].reset_index()

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> np.ndarray:
        return self.table["id"].to_numpy(dtype=str)

    def has(self, column: str) -> bool:
        """True when the column exists and has at least one non-missing value."""
        return column in self.table.columns and bool(self.table[column].notna().any())

    def rows(self, *, role: str | None = None, split: str | Sequence[str] | None = None,
             labelled: str | None = None) -> np.ndarray:
        """Row positions matching a role (ignored when the table has no role column), split(s)
        and, with ``labelled``, a non-missing value in that column."""
        mask = np.ones(len(self.table), dtype=bool)
        if role is not None and "role" in self.table.columns:
            mask &= (self.table["role"] == role).to_numpy()
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            mask &= self.table["split"].isin(splits).to_numpy()
        if labelled is not None:
            mask &= self.table[labelled].notna().to_numpy()
        return np.flatnonzero(mask)

    def images(self, rows: np.ndarray | None = None) -> np.ndarray:
        """uint8 images [n, H, W, 3] for the given row positions (all rows when None)."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        return self.image_source(rows)

    def image_reader(self) -> ImageReader:
        """The dataset's ``reader``, or one over ``image_source`` for in-memory datasets."""
        return self.reader if self.reader is not None else ArrayReader(self)

    def titles(self, rows: np.ndarray | None = None) -> list[str]:
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        if "title" not in self.table.columns:
            return [""] * len(rows)
        return self.table["title"].iloc[rows].fillna("").astype(str).tolist()

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """Row positions of ids; raises DatasetError naming unknown ids."""
        pos = self._position.get_indexer(pd.Index([str(i) for i in ids]))
        missing = np.flatnonzero(pos < 0)
        if len(missing):
            raise DatasetError(
                f"dataset {self.name!r}: {len(missing)} unknown ids, e.g. {str(ids[missing[0]])!r}"
            )
        return pos


def array_image_source(images: np.ndarray) -> ImageSource:
    """An image source over an in-memory uint8 array [n, H, W, 3]."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"images must be uint8 [n, H, W, 3], got {images.dtype} {images.shape}")
    return lambda rows: images[rows]


class ArrayReader:
    """An ``ImageReader`` over a dataset's ``image_source`` (uint8 arrays as PIL images)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.source = dataset.name

    def open(self, row: int) -> Any:
        from PIL import Image

        return Image.fromarray(self.dataset.image_source(np.array([row], dtype=np.int64))[0])

    def label(self, row: int) -> str:
        return f"id {self.dataset.table['id'].iat[row]!r}"
