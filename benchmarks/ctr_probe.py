"""Does the CTR harness reward information wherever it sits in the vector? (issue #14)

Probe embeddings made from homestead's click latents: the covers' true style and scene as
one-hots and their light warmth (13 numbers, plus Gaussian noise of std 0.1), used

- ``clean``: the 13 numbers;
- ``noise=S``: the 13 numbers and 243 zeros, Gaussian noise of std S on all 256 coordinates,
  randomly rotated;
- ``padded-rotated``: the 13 numbers and 243 unit-Gaussian dimensions, randomly rotated;
- ``ids``: no image features (the ID-only ranker).

Each is scored by ``bench.tasks.ctr.train.score`` (DICM, mqap, the profile's options) with the
profile similarity on and off, over ``--seeds`` seeds; prints click AUC per setting.
``--feature-sets`` scores the ablation too; ``--options`` overrides CtrConfig settings (JSON);
``--write DIR`` writes the probes as ``precomputed`` files (every dataset id; zeros for items
outside the log) for ``bench run`` and its paired tests.

    python benchmarks/ctr_probe.py                     # default world, 2 seeds
    python benchmarks/ctr_probe.py --users 6000 --seeds 1 --settings ids,clean,padded-rotated
    python benchmarks/ctr_probe.py --settings clean --feature-sets ad,behavior,dicm --no-off
    python benchmarks/ctr_probe.py --write /tmp/probes --settings clean,padded-rotated
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.core import registry  # noqa: E402
from bench.core.cache import Cache  # noqa: E402
from bench.core.config import get_profile  # noqa: E402
from bench.tasks.ctr.train import score  # noqa: E402


def probes(latents, rng: np.random.Generator, noise_levels: list[float]) -> dict:
    styles, scenes = sorted(latents["true_style"].unique()), sorted(latents["true_scene"].unique())
    clean = np.concatenate([np.eye(len(styles))[latents["true_style"].map(styles.index)],
                            np.eye(len(scenes))[latents["true_scene"].map(scenes.index)],
                            latents["warmth"].to_numpy()[:, None]], axis=1)
    clean = clean + rng.normal(0, 0.1, clean.shape)
    n, d = clean.shape
    rotation, _ = np.linalg.qr(rng.normal(size=(256, 256)))
    padded = np.concatenate([clean, np.zeros((n, 256 - d))], axis=1)
    out = {"ids": None, "clean": clean,
           "padded-rotated": np.concatenate([clean, rng.normal(size=(n, 256 - d))], 1) @ rotation}
    for s in noise_levels:
        out[f"noise={s:g}"] = (padded + rng.normal(0, s, padded.shape)) @ rotation
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=None, help="homestead n_users")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--noise", default="0.1,0.2,0.3,0.5")
    parser.add_argument("--settings", default=None, help="comma-separated subset to run")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--feature-sets", default="dicm", help="comma-separated, e.g. ad,dicm")
    parser.add_argument("--options", default="{}", help="CtrConfig overrides as JSON")
    parser.add_argument("--no-off", action="store_true", help="skip similarity=False")
    parser.add_argument("--write", default=None, help="write probe .npz files here and stop")
    args = parser.parse_args()
    registry.load_plugins()
    profile = get_profile("default")
    options = profile.dataset_options("homestead")
    if args.users:
        options["n_users"] = args.users
    dataset = registry.build_dataset("homestead", Cache(args.cache), **options)
    latents = dataset.logs["item_latents"]
    vectors = probes(latents, np.random.default_rng(123),
                     [float(s) for s in args.noise.split(",")])
    wanted = args.settings.split(",") if args.settings else list(vectors)
    if args.write:
        write(Path(args.write), dataset, latents["item_id"], {k: vectors[k] for k in wanted})
        return
    impressions = dataset.logs["impressions"]
    overrides = json.loads(args.options)
    print(f"homestead, {options['n_users']} users, {len(impressions)} impressions, "
          f"{args.seeds} seeds")
    for similarity in (True,) if args.no_off else (True, False):
        for name in wanted:
            sets = ["none"] if vectors[name] is None else args.feature_sets.split(",")
            for feature_set in sets:
                start = time.perf_counter()
                aucs = [score(vectors[name], latents["item_id"], impressions, dataset.table,
                              seed=seed, feature_set=feature_set,
                              **{"similarity": similarity, **overrides})["ctr_auc"]
                        for seed in range(args.seeds)]
                print(f"similarity={similarity!s:5} {name:15} {feature_set:8} ctr_auc "
                      f"{np.mean(aucs):.4f} {[round(a, 4) for a in aucs]} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
        if wanted == ["ids"]:
            break


def write(folder: Path, dataset, item_ids, vectors: dict) -> None:
    """One ``precomputed`` .npz per probe: every dataset id, zeros outside the log's items."""
    folder.mkdir(parents=True, exist_ok=True)
    position = dataset.positions(list(item_ids))
    for name, probe in vectors.items():
        if probe is None:
            continue
        full = np.zeros((len(dataset), probe.shape[1]), dtype=np.float32)
        full[position] = probe
        path = folder / f"probe-{name}.npz"
        np.savez(path, ids=np.asarray(dataset.ids).astype(str), vectors=full)
        print(path)


if __name__ == "__main__":
    main()
