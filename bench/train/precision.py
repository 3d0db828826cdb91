"""The training precision: ``auto`` (the default), ``fp32`` or ``bf16``, resolved once per run.

Why: bf16 autocast trains the suite's ResNets about twice as fast on a CPU with native bf16
(``avx512_bf16``/AMX; ``bench perf train --precisions`` measures it), and that time buys longer
SSL budgets. Numbers differ between precisions, so the resolved value (never ``auto``) is part
of every extractor's ``config()`` (checkpoint and embeddings keys), of the fine-tuning result
keys and of run.json. ``auto`` picks bf16 where the device has it natively (CUDA with bf16, or
a CPU oneDNN reports bf16 support for) and fp32 elsewhere, so a machine without bf16 is never
slowed down by emulated bf16. ``fp16`` exists only on CUDA without bf16 (the loop then scales
the loss). Embedding stays in fp32 on the CPU whatever the training precision
(``backbones.embed_images``).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_supported(device: torch.device | str) -> bool:
    """Native bf16 on ``device``: CUDA's own check, or oneDNN's on the CPU (avx512_bf16/AMX
    kernels; without them bf16 is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def cpu_has_bf16() -> bool:
    """oneDNN's own check for native bf16 kernels on this CPU (the tests simulate a CPU
    without them by replacing this function)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str | None, device: torch.device | str) -> str:
    """``fp32``, ``bf16`` (or ``fp16``, CUDA without bf16) for ``requested`` on ``device``:
    ``auto`` (or None) follows ``bf16_supported``; an explicit value is kept; anything else is
    refused with one line naming it."""
    value = str(requested or "auto").lower()
    if value not in (*PRECISIONS, "fp16"):
        raise ValueError(f"precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if value == "auto":
        if bf16_supported(device):
            return "bf16"
        return "fp16" if device.type == "cuda" else "fp32"
    if value == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' is for CUDA only; use bf16 or fp32 on the CPU")
    return value


def describe(requested: str | None, resolved: str, device: torch.device | str) -> str:
    """The one log line that says which precision trains and why."""
    why = (f"auto: bf16 {'is' if bf16_supported(device) else 'is not'} native on "
           f"{torch.device(device).type}" if str(requested or "auto") == "auto"
           else "asked for")
    return f"training precision {resolved} ({why})"


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for a resolved ``precision`` (nothing for fp32)."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)
