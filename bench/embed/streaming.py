"""Images streamed through a torch ``DataLoader``: decoded and transformed in worker processes.

Why: a catalogue of 100k photos at 224 px is 15 GB as uint8; it must never be held in memory
as a whole. A dataset with an image ``reader`` (the ``folder`` dataset) is read row by row in
DataLoader workers, each image transformed at the extractor's own resolution (timm, Hugging
Face or OpenCLIP preprocessing, or the suite's centre crop and resize for its own small
extractors), so memory holds a few batches, whatever the catalogue's size.

A row whose image cannot be read does not stop the stream at once: the workers report it and
the stream raises one ``DatasetError`` at its end that names the count and the first example
(``manifest.csv: 2 images cannot be read, e.g. id 'x9' path 'a.jpg' (OSError: ...)``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from bench.core.data import Dataset, DatasetError, ImageReader

Transform = Callable[[Image.Image], Any]
"""PIL image -> tensor (or uint8 array) of a fixed shape."""

_progress: contextvars.ContextVar[Any] = contextvars.ContextVar("bench_stream_progress",
                                                                 default=None)


def default_workers() -> int:
    """DataLoader workers: ``$BENCH_WORKERS``, else one per core up to 2 (2-core target)."""
    text = os.environ.get("BENCH_WORKERS")
    if text:
        try:
            return max(0, int(text))
        except ValueError:
            raise DatasetError(f"BENCH_WORKERS={text!r} is not an integer") from None
    return min(2, os.cpu_count() or 1)


@contextlib.contextmanager
def progress(bar: Any) -> Iterator[None]:
    """Streams inside this block call ``bar.update(n)`` after every batch of n images."""
    token = _progress.set(bar)
    try:
        yield
    finally:
        _progress.reset(token)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, keeping what the pixels mean: EXIF orientation applied; 16-bit and 32-bit
    integer grayscale scaled to 8 bits (PIL's ``convert`` would clip them to near-white): a
    32-bit image (mode ``I``) by the range of the smallest type that holds its values, 8 bits
    (<= 255), 16 bits (<= 65,535) or 32 bits (2**31 - 1, PIL's signed int32); negatives are 0."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        peak = values.max() if values.size else 0.0
        top = (65535.0 if image.mode.startswith("I;16") else
               255.0 if peak <= 255 else 65535.0 if peak <= 65535 else float(2**31 - 1))
        image = Image.fromarray(np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max() <= 1.0 else 1.0
        image = Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


class SquareUint8:
    """The suite's own preprocessing: centre square crop, bilinear resize to ``size``, uint8
    HWC. JPEGs are decoded at a reduced scale first (``draft``) when the target is small."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.format == "JPEG":
            image.draft("RGB", (self.size, self.size))
        image = to_rgb(image)
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())


class RowImages(torch.utils.data.Dataset):
    """Row positions -> (position in ``rows``, transformed image or None, error text)."""

    def __init__(self, reader: ImageReader, rows: np.ndarray, transform: Transform):
        self.reader, self.rows, self.transform = reader, np.asarray(rows, np.int64), transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, Any, str]:
        try:
            with self.reader.open(int(self.rows[i])) as image:
                return i, self.transform(image), ""
        except Exception as error:  # noqa: BLE001 - reported once, with the row, at the end
            return i, None, f"{type(error).__name__}: {error}".splitlines()[0]


def _collate(items: list[tuple[int, Any, str]]) -> tuple[torch.Tensor, Any, list]:
    good = [(i, x) for i, x, error in items if not error]
    failed = [(i, error) for i, _, error in items if error]
    index = torch.tensor([i for i, _ in good], dtype=torch.long)
    if not good:
        return index, None, failed
    return index, torch.utils.data.default_collate([x for _, x in good]), failed


def stream(reader: ImageReader, rows: np.ndarray, transform: Transform, batch_size: int,
           workers: int | None = None) -> Iterator[Any]:
    """Batches of transformed images for ``rows``, in order, decoded in ``workers`` DataLoader
    processes (``default_workers()`` when None; 0 decodes in this process). Raises one
    ``DatasetError`` after the last batch when some images could not be read."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return
    workers = default_workers() if workers is None else workers
    workers = min(workers, max(1, len(rows) // max(1, batch_size)))
    loader = torch.utils.data.DataLoader(
        RowImages(reader, rows, transform), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=_collate,
        prefetch_factor=4 if workers else None)
    failures: list[tuple[int, str]] = []
    bar = _progress.get()
    for index, batch, failed in loader:
        failures += failed
        if bar is not None:
            bar.update(len(index) + len(failed))
        if failures:
            continue  # the result would be incomplete: read on only to count the bad rows
        yield batch
    if failures:
        first, error = failures[0]
        label = reader.label(int(rows[first]))
        noun = "image cannot" if len(failures) == 1 else "images cannot"
        raise DatasetError(f"{reader.source}: {len(failures)} {noun} be read, e.g. {label} "
                           f"({error})")


def uint8_batches(dataset: Dataset, rows: np.ndarray, batch_size: int,
                  workers: int | None = None) -> Iterator[np.ndarray]:
    """uint8 [n, S, S, 3] batches at the dataset's ``image_size`` S: slices of an in-memory
    dataset, or images decoded and resized in DataLoader workers for a dataset of files."""
    rows = np.asarray(rows, dtype=np.int64)
    if dataset.reader is None:
        for start in range(0, len(rows), batch_size):
            yield dataset.images(rows[start:start + batch_size])
        return
    for batch in stream(dataset.reader, rows, SquareUint8(dataset.image_size), batch_size,
                        workers):
        yield batch.numpy()
