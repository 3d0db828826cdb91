"""Profiles do what they say: the budget's precedence, and no dead ``*`` keys."""

from __future__ import annotations

import dataclasses

from bench.core import registry
from bench.core.config import PROFILES, Profile, get_profile


def test_budget_precedence_star_then_plugin_defaults_then_named_section():
    profile = Profile(name="p", datasets={}, extractors=(), tasks=(), seeds=1,
                      train={"*": {"epochs": 1, "width": 9}, "x": {"epochs": 7}})
    defaults = {"p": {"epochs": 5, "lr": 0.1}, "other": {"epochs": 99}}
    auto = {"precision": "auto"}  # the profile's training precision comes first
    assert profile.budget("x", defaults) == auto | {"epochs": 7, "width": 9, "lr": 0.1}
    assert profile.budget("y", defaults) == auto | {"epochs": 5, "width": 9, "lr": 0.1}
    assert profile.budget("y") == auto | {"epochs": 1, "width": 9}  # no plugin defaults
    bf16 = dataclasses.replace(profile, precision="bf16", train={"x": {"precision": "fp32"}})
    assert bf16.budget("y")["precision"] == "bf16"
    assert bf16.budget("x")["precision"] == "fp32"  # a named section overrides it


def test_every_star_key_of_a_builtin_profile_reaches_an_extractor(plugins):
    """``random`` has no defaults of its own, so it reads the whole ``*`` section: a key no
    extractor reads would be a setting the profile shows but never applies."""
    for name, profile in PROFILES.items():
        star = profile.train.get("*", {})
        built = registry.build_extractor("random", get_profile(name))
        for key, value in star.items():
            assert getattr(built, key) == value, (name, key)


def test_a_named_section_overrides_a_plugin_default(plugins):
    profile = get_profile("quick")
    profile = dataclasses.replace(profile, train={**profile.train, "moco_v2": {"epochs": 3}})
    assert registry.build_extractor("moco_v2", profile).config()["epochs"] == 3
