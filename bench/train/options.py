"""A training's options: the profile's budget, the plugin's defaults and the spec's ``key=value``.

Why one place: every learned extractor resolves its settings the same way, with the same
one-line refusal for an option it does not take or a value of the wrong type.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

NOT_TRAINED = ("device", "max_seconds")  # options that never change a finished training


def resolve_options(name: str, defaults: dict[str, dict[str, Any]], profile: Any,
                    options: dict[str, str], extra: Iterable[str] = ()) -> dict[str, Any]:
    """The profile's budget for ``name`` (``profile.budget(name, defaults)``) overridden by the
    spec's string options, each cast to the type of the budget value it replaces. Unknown keys
    are refused so a typo never silently trains the default model."""
    budget = profile.budget(name, defaults)
    merged = dict(budget)
    for key, text in options.items():
        if key in extra:
            merged[key] = text
            continue
        if key not in budget:
            known = ", ".join(sorted([*budget, *extra]))
            raise ValueError(f"{name}: unknown option {key!r}; known: {known}")
        merged[key] = _cast(text, budget[key], f"{name}: option {key}")
    return merged


def _cast(text: str, like: Any, where: str) -> Any:
    if isinstance(like, bool):
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"{where}: expected true/false, got {text!r}")
        return text.lower() in ("1", "true", "yes")
    try:
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float) or like is None:
            return float(text)
    except ValueError as error:
        raise ValueError(f"{where}: expected a number, got {text!r}") from error
    return text
