"""The CTR task's input: a validated impressions log turned into index tensors, built once.

An impressions log has one row per (user, item, day) impression with three 0/1 outcomes:
``click``, ``detail`` (product-detail view) and ``conversion``. Item ids must be ids of the
embeddings (the dataset's ``id`` column). The last day is the evaluation day, earlier days train.

Everything the training loop needs is precomputed here as integer tensors so a batch is a few
index gathers, never a Python loop over samples:

- items: the log's distinct items, in dataset row order; ``item`` indexes them (image table row);
- ``item_vocab``: each item's ID-embedding index, 0 (out of vocabulary) for items never shown on a
  training day, so cold-start items cannot use an ID embedding that was never trained;
- ``history``: per (user, day), the user's last L clicked items strictly before that day (pad -1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

REQUIRED_COLUMNS = ("user_id", "item_id", "day", "click", "detail", "conversion")
LABEL_COLUMNS = ("click", "detail", "conversion")
DEFAULT_ITEM_FIELDS = ("category", "coarse_category", "style", "scene")


class CtrDataError(ValueError):
    """A refused impressions log; the message names the column, the count and an example."""


def validate_log(log: pd.DataFrame, known_ids: Sequence[str] | np.ndarray,
                 source: str = "impressions log") -> pd.DataFrame:
    """A clean copy of ``log`` (string ids, int day, int8 labels) or CtrDataError.

    Refuses missing columns, missing values, non-integer days, labels other than 0/1, item ids
    that are not in ``known_ids`` (the embeddings' ids), logs with fewer than two days,
    conversions without a click, and an evaluation day too thin to score
    (:func:`check_eval_day`).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in log.columns]
    if missing:
        raise CtrDataError(
            f"{source}: missing column(s) {missing}; an impressions log needs the columns "
            f"{list(REQUIRED_COLUMNS)} (see docs/ctr.md)"
        )
    if len(log) == 0:
        raise CtrDataError(f"{source}: no rows")
    out = log.loc[:, list(REQUIRED_COLUMNS)].copy()
    for column in REQUIRED_COLUMNS:
        empty = out[column].isna().to_numpy()
        if empty.any():
            raise CtrDataError(f"{source}: column {column!r} has {int(empty.sum())} missing "
                               f"values, e.g. row {int(np.flatnonzero(empty)[0])}")
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    out["day"] = _integers(out["day"], "day", source)
    for column in LABEL_COLUMNS:
        values = _integers(out[column], column, source)
        bad = ~np.isin(values, (0, 1))
        if bad.any():
            raise CtrDataError(f"{source}: column {column!r} must be 0/1; {int(bad.sum())} "
                               f"other values, e.g. {values[bad][0].item()!r}")
        out[column] = values.astype(np.int8)
    known = pd.Index(np.asarray(known_ids).astype(str))
    unknown = ~out["item_id"].isin(known).to_numpy()
    if unknown.any():
        examples = pd.unique(out["item_id"][unknown])
        raise CtrDataError(
            f"{source}: {len(examples)} item ids ({int(unknown.sum())} rows) are not ids of the "
            f"embeddings, e.g. {examples[0]!r}; item_id must match the dataset's id column"
        )
    if out["day"].nunique() < 2:
        raise CtrDataError(f"{source}: needs at least two days (train on earlier days, evaluate "
                           f"on the last), got only day {int(out['day'].iloc[0])}")
    converted_unclicked = ((out["conversion"] == 1) & (out["click"] == 0)).to_numpy()
    if converted_unclicked.any():
        row = int(np.flatnonzero(converted_unclicked)[0])
        raise CtrDataError(
            f"{source}: {int(converted_unclicked.sum())} rows have conversion=1 with click=0, "
            f"e.g. row {row} (user {out['user_id'].iloc[row]!r}, item "
            f"{out['item_id'].iloc[row]!r}, day {int(out['day'].iloc[row])}); the conversion "
            f"head (ESMM) models conversions after a click, so a conversion needs click=1")
    check_eval_day(out, source)
    return out.reset_index(drop=True)


MIN_EVAL_USERS = 2  # the intervals resample users: one user has no spread to measure


def check_eval_day(log: pd.DataFrame, source: str) -> None:
    """The last day is scored: it needs impressions of ``MIN_EVAL_USERS`` users at least, and
    both a click and a non-click (click AUC compares them); refused before any training."""
    last = int(log["day"].max())
    day = log[log["day"] == last]
    users, clicks = int(day["user_id"].nunique()), int(day["click"].sum())
    if users < MIN_EVAL_USERS or clicks == 0 or clicks == len(day):
        raise CtrDataError(
            f"{source}: the evaluation day (day {last}, the last) needs impressions of at "
            f"least {MIN_EVAL_USERS} users with both clicks and non-clicks; it has {len(day)} "
            f"rows from {users} user{'s' if users != 1 else ''} with {clicks} clicks")


def _integers(column: pd.Series, name: str, source: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        example = column.iloc[int(np.flatnonzero(bad)[0])]
        example = example.item() if isinstance(example, np.generic) else example  # 1.5, not np.float64(1.5)
        raise CtrDataError(f"{source}: column {name!r} must hold integers; {int(bad.sum())} "
                           f"other values, e.g. {example!r}")
    return values.astype(np.int64)


@dataclass
class CtrData:
    """Index tensors for one log (see the module docstring); row order = the log's."""

    item_rows: np.ndarray  # [n_items] dataset row of each log item
    user: torch.Tensor  # [n] user vocabulary index, 0 = unseen in training
    item: torch.Tensor  # [n] item index into item_rows
    history_key: torch.Tensor  # [n] row of `history` for the impression's (user, day)
    history: torch.Tensor  # [n_keys, L] item indices of earlier clicks, -1 = padding
    labels: torch.Tensor  # [n, 3] float click, detail, conversion
    item_vocab: torch.Tensor  # [n_items] ID-embedding index, 0 = unseen in training
    item_fields: torch.Tensor  # [n_items, F] categorical field indices, 0 = unknown
    field_names: tuple[str, ...]
    field_sizes: tuple[int, ...]
    n_users: int  # vocabulary sizes including the 0 slot
    n_item_ids: int
    train: np.ndarray  # row positions of training impressions
    test: np.ndarray  # row positions of evaluation impressions (last day)
    cold: np.ndarray  # bool [n]: the impression's item is cold (see cold_items)
    groups: np.ndarray  # [n] user codes for GAUC
    eval_day: int
    day: np.ndarray | None = None  # [n] day of each impression

    @property
    def history_length(self) -> int:
        return int(self.history.shape[1])

    def batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model inputs for impression rows: user, item, history (clamped) and its mask."""
        history = self.history[self.history_key[rows]]
        return {"user": self.user[rows], "item": self.item[rows],
                "history": history.clamp(min=0), "mask": history >= 0}

    def to(self, device: str) -> CtrData:
        for name in ("user", "item", "history_key", "history", "labels", "item_vocab",
                     "item_fields"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def build(log: pd.DataFrame, table: pd.DataFrame, history_length: int = 20,
          item_fields: Sequence[str] = DEFAULT_ITEM_FIELDS) -> CtrData:
    """Index tensors for a validated ``log`` against the dataset ``table`` (ids, labels,
    optional ``publish_day``)."""
    position = pd.Index(table["id"].astype(str))
    rows_of_log = position.get_indexer(log["item_id"])
    item_rows, item = np.unique(rows_of_log, return_inverse=True)
    item = item.reshape(-1)
    day = log["day"].to_numpy()
    eval_day = int(day.max())
    is_train = day < eval_day
    users, user_codes = np.unique(log["user_id"].to_numpy(), return_inverse=True)
    user_codes = user_codes.reshape(-1)
    user_vocab = _vocabulary(user_codes, is_train, len(users))
    item_vocab = _vocabulary(item, is_train, len(item_rows))
    fields, names, sizes = _item_fields(table, item_rows, item, is_train, item_fields)
    key, history = _histories(user_codes, day, item, log["click"].to_numpy(), history_length)
    labels = log.loc[:, list(LABEL_COLUMNS)].to_numpy(dtype=np.float32)
    return CtrData(
        item_rows=item_rows,
        user=torch.from_numpy(user_vocab[user_codes]),
        item=torch.from_numpy(item.astype(np.int64)),
        history_key=torch.from_numpy(key),
        history=torch.from_numpy(history),
        labels=torch.from_numpy(labels),
        item_vocab=torch.from_numpy(item_vocab),
        item_fields=torch.from_numpy(fields),
        field_names=names,
        field_sizes=sizes,
        n_users=int(user_vocab.max()) + 1,
        n_item_ids=int(item_vocab.max()) + 1,
        train=np.flatnonzero(is_train),
        test=np.flatnonzero(~is_train),
        cold=cold_items(table, item_rows, item, is_train, eval_day)[item],
        groups=user_codes,
        eval_day=eval_day,
        day=day.astype(np.int64),
    )


def validation_split(data: CtrData, days: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): the last ``days`` training days are the validation day(s),
    carved from the training rows, so the evaluation day is never among them. Refused when
    fewer than ``days`` + 1 training days exist (nothing would be left to fit on)."""
    if data.day is None:
        raise ValueError("this CtrData has no impression days; rebuild it with data.build")
    train_days = np.unique(data.day[data.train])
    if len(train_days) <= days:
        raise CtrDataError(f"a validation split of {days} day(s) needs at least {days + 1} "
                           f"training days, the log has {len(train_days)}")
    first_validation = train_days[-days]
    is_validation = data.day[data.train] >= first_validation
    return data.train[~is_validation], data.train[is_validation]


def seen_only_in(data: CtrData, rows: np.ndarray) -> CtrData:
    """``data`` for a model fitted on ``rows`` only: users and items absent from them get the
    "unseen" ID (0), as evaluation-day newcomers do, instead of an embedding never trained."""
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=data.user.device)
    user_seen = torch.zeros(data.n_users, dtype=torch.bool, device=data.user.device)
    user_seen[data.user[rows_t]] = True
    item_seen = torch.zeros(len(data.item_vocab), dtype=torch.bool, device=data.user.device)
    item_seen[data.item[rows_t]] = True
    return replace(data, user=torch.where(user_seen[data.user], data.user, 0),
                   item_vocab=torch.where(item_seen, data.item_vocab, 0))


def _vocabulary(codes: np.ndarray, is_train: np.ndarray, n: int) -> np.ndarray:
    """Map codes 0..n-1 to 1..k for codes seen in training, 0 for the rest."""
    seen = np.zeros(n, dtype=bool)
    seen[codes[is_train]] = True
    vocab = np.zeros(n, dtype=np.int64)
    vocab[seen] = np.arange(1, int(seen.sum()) + 1)
    return vocab


def _item_fields(table: pd.DataFrame, item_rows: np.ndarray, item: np.ndarray,
                 is_train: np.ndarray, columns: Sequence[str]
                 ) -> tuple[np.ndarray, tuple[str, ...], tuple[int, ...]]:
    """Categorical item columns (e.g. category) as [n_items, F] vocabulary indices."""
    train_items = np.unique(item[is_train])
    out, names, sizes = [], [], []
    for column in columns:
        if column not in table.columns:
            continue
        values = table[column].iloc[item_rows]
        if values.notna().sum() == 0:
            continue
        values = values.astype(str).where(values.notna(), None).to_numpy(dtype=object)
        train_values = sorted({v for v in values[train_items] if v is not None})
        lookup = {v: i + 1 for i, v in enumerate(train_values)}
        out.append(np.array([lookup.get(v, 0) for v in values], dtype=np.int64))
        names.append(column)
        sizes.append(len(lookup) + 1)
    fields = np.stack(out, axis=1) if out else np.zeros((len(item_rows), 0), dtype=np.int64)
    return fields, tuple(names), tuple(sizes)


def _histories(user: np.ndarray, day: np.ndarray, item: np.ndarray, click: np.ndarray,
               length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (user, day): the last ``length`` clicked items on earlier days, most recent last.

    Vectorised: clicks are sorted by (user, day, log order); for each key the clicks before it
    are the ``searchsorted`` prefix of that user's segment.
    """
    span = int(day.max() - day.min() + 2)
    key_value = user.astype(np.int64) * span + (day - day.min())
    keys, key_index = np.unique(key_value, return_inverse=True)
    clicked = np.flatnonzero(click == 1)
    order = clicked[np.lexsort((clicked, key_value[clicked]))]
    click_keys, click_items = key_value[order], item[order]
    end = np.searchsorted(click_keys, keys, side="left")  # clicks strictly before the day
    start = np.searchsorted(click_keys, (keys // span) * span, side="left")  # user's first click
    offsets = end[:, None] - length + np.arange(length)[None, :]
    valid = offsets >= start[:, None]
    history = np.where(valid, click_items[np.clip(offsets, 0, max(len(order) - 1, 0))]
                       if len(order) else -1, -1)
    return key_index.reshape(-1).astype(np.int64), history.astype(np.int64)


def cold_items(table: pd.DataFrame, item_rows: np.ndarray, item: np.ndarray,
               is_train: np.ndarray, eval_day: int) -> np.ndarray:
    """Bool [n_items]: first published on the evaluation day (``publish_day`` column), or, when
    the table has no publish day, never shown on a training day."""
    if "publish_day" in table.columns and table["publish_day"].iloc[item_rows].notna().any():
        publish = pd.to_numeric(table["publish_day"].iloc[item_rows], errors="coerce")
        return (publish >= eval_day).to_numpy()
    seen = np.zeros(len(item_rows), dtype=bool)
    seen[item[is_train]] = True
    return ~seen
