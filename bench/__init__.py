"""Embedding-quality benchmark suite for recommendation and search."""

import os

from bench import _torchvision_compat  # noqa: F401  (must run before torchvision is imported)
from bench.core import logs

logs.install()  # ``[bench] ...`` lines on stderr for every module's logger (bench/core/logs.py)

# Nothing is downloaded at run time: the Hugging Face libraries (used by the timm:, hf: and
# open_clip: adapters) read only local files and the local hub cache, unless the user set
# these switches themselves. Set before huggingface_hub is imported, which reads them once.
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
for _name in OFFLINE_SWITCHES:
    os.environ.setdefault(_name, "1")

__version__ = "0.1.0"
