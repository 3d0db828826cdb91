"""Cover titles: noisy text tied to a cover's style, scene and furniture.

Why its own module: the text modality has its own vocabulary (synonyms, filler, templates) and
its own noise (omitted or wrong style words, typos), and it draws from its own random stream,
so changing titles never moves a pixel.
"""

from __future__ import annotations

import numpy as np

from .vocabulary import LEAVES, STYLES, pick

STYLE_WORDS = dict(nordic=("nordic", "scandi", "scandinavian", "hygge"),
                   industrial=("industrial", "loft", "urban", "warehouse"),
                   vintage=("vintage", "retro", "classic", "antique"),
                   modern=("modern", "contemporary", "minimalist", "sleek"),
                   rustic=("rustic", "farmhouse", "country", "cabin"),
                   boho=("boho", "bohemian", "eclectic", "hippie"))
SCENE_WORDS = dict(living_room=("living room", "lounge", "sitting room", "family room"),
                   bedroom=("bedroom", "master bedroom", "guest room", "sleeping nook"),
                   dining_room=("dining room", "dining area", "dinner corner", "eating nook"),
                   study=("study", "home office", "workspace", "reading corner"),
                   kitchen=("kitchen", "kitchenette", "breakfast bar", "cooking space"),
                   balcony=("balcony", "terrace", "patio", "outdoor nook"))
COARSE_WORDS = dict(sofa=("sofa", "couch", "settee"), chair=("chair", "seat", "seating"),
                    table=("table", "tabletop"), bed=("bed", "bedframe"),
                    lamp=("lamp", "lighting", "light"), cabinet=("cabinet", "storage", "cupboard"))
FILLER = ("cozy", "bright", "small", "tiny", "budget", "dreamy", "ideas", "inspo", "tour",
          "makeover", "diy", "before and after", "must see", "home", "decor", "love this",
          "weekend project", "our", "new", "finally", "2024", "goals", "vibes")
TEMPLATES = ("{s} {r} with {i}", "my {s} {r} makeover", "{f} {s} {r} ideas", "{i} in a {s} {r}",
             "how to style a {s} {r}", "{r} tour: {s} {i}", "{f} {r} {f}: {s} {i}",
             "{s} {i} for the {r}", "the {f} {s} {r}")


def make_title(style: str, scene: str, leaves: list[str], g: np.random.Generator) -> str:
    """A title built from words tied to style, scene and category, with synonyms and filler;
    some omit the style or the scene, some name the wrong style, some have a typo."""
    u = g.random()
    if u < 0.2:
        s = ""
    elif u < 0.27:
        s = pick(g, STYLE_WORDS[pick(g, tuple(x for x in STYLES if x != style))])
    else:
        s = pick(g, STYLE_WORDS[style])
    r = "" if g.random() < 0.15 else pick(g, SCENE_WORDS[scene])
    leaf = pick(g, tuple(leaves))
    i = leaf.replace("_", " ") if g.random() < 0.5 else pick(g, COARSE_WORDS[LEAVES[leaf][0]])
    text = pick(g, TEMPLATES).format(s=s, r=r, i=i, f=pick(g, FILLER))
    words = text.split()
    if g.random() < 0.5:
        words.insert(0 if g.random() < 0.5 else len(words), pick(g, FILLER))
    if g.random() < 0.08:
        j = int(g.integers(len(words)))
        if len(words[j]) > 3:
            c = int(g.integers(len(words[j]) - 1))
            words[j] = words[j][:c] + words[j][c + 1] + words[j][c] + words[j][c + 2:]
    return " ".join(words)


