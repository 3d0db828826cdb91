"""Embedding-quality benchmark suite for recommendation and search."""

from bench import _torchvision_compat  # noqa: F401  (must run before torchvision is imported)

__version__ = "0.1.0"
