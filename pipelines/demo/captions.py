"""The demo corpus's captions and the small Word2Vec trained on them.

Captions are generated from the true classes (never for OOV_TAG, whose word therefore has no
vector), plus a few per synonym (SYNONYMS) in its tag's contexts, so the word vectors place
"automobile" near "car": the site's "related" answer to a query outside the tag set.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from pipelines.demo.objects import OOV_TAG, TAGS

log = logging.getLogger(__name__)

# Caption material per class (never for OOV_TAG): what the object is called and where it is seen.
_CAPTION_CONTEXT: dict[str, tuple[str, ...]] = {
    "circle": ("drawn with a compass", "round like a coin", "on a geometry worksheet", "with no corners at all"),
    "square": ("with four equal sides", "on a geometry worksheet", "with four right angles", "like a tile on the floor"),
    "triangle": ("with three sides", "on a geometry worksheet", "pointing up like a roof", "with three corners"),
    "star": ("shining in the night sky", "with five points", "twinkling above the town", "on top of a christmas tree"),
    "heart": ("on a valentine card", "a symbol of love", "drawn by a child", "full of love and warmth"),
    "moon": ("glowing in the night sky", "a thin crescent at night", "above the dark sea", "rising over the hills at night"),
    "sun": ("shining in the sky", "bright and warm at noon", "rising over the hills", "with rays of light"),
    "tree": ("with green leaves in the park", "growing in the forest", "with a thick trunk and branches", "in the garden"),
    "house": ("with a red roof and a door", "on a quiet street", "where a family lives", "with windows and a chimney"),
    "car": ("driving down the road", "parked on the street", "with four wheels", "on the highway"),
    "fish": ("swimming in blue water", "in the sea", "with fins and scales", "in an aquarium"),
    "flower": ("blooming in the garden", "with colourful petals", "in a spring meadow", "in a vase on the table"),
    "apple": ("on the kitchen table", "fresh from the orchard", "a sweet fruit", "hanging from a branch"),
    "cloud": ("floating in the sky", "white and fluffy", "bringing rain", "drifting in the wind"),
    "arrow": ("pointing the way", "on a road sign", "showing the direction", "shot from a bow"),
    "cross": ("a plus sign", "on a first aid kit", "marking the spot", "with two crossing bars"),
    "ring": ("made of gold", "worn on a finger", "a round band", "a wedding gift"),
    "diamond": ("a sparkling gem", "cut and polished", "on a playing card", "precious and shiny"),
    "bell": ("ringing in the church tower", "on a school door", "making a loud sound", "at the front gate"),
    "kite": ("flying high in the wind", "on a string at the beach", "with a long tail", "in the windy sky"),
    "fire truck": ("with a long ladder", "rushing to a fire", "with firefighters on board", "at the fire station"),
    "traffic light": ("at the crossing", "showing red to stop", "turning green for go", "on a busy street corner"),
    "peach": ("a soft sweet fruit", "fresh from the orchard", "with fuzzy skin", "ripe in the summer"),
    "banana": ("a long yellow fruit", "in a bunch at the market", "peeled for breakfast", "curved like a smile"),
    "taxi": ("waiting at the station", "with a sign on the roof", "driving down the road", "taking people across town"),
    "lantern": ("glowing in the dark", "hanging by the door", "lit with a candle", "carried along the path at night"),
}
# Words that are not tags but name one (synonyms, plurals), written into the captions in the
# tag's own contexts so the word vectors place them near it: the site's "related" answer to a
# query outside the tag set ("automobile" -> car, "fire engine" -> fire truck).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "car": ("automobile", "cars"),
    "tree": ("trees", "oak"),
    "fish": ("fishes", "goldfish"),
    "flower": ("flowers", "blossom"),
    "house": ("houses", "cottage"),
    "apple": ("apples",),
    "star": ("stars",),
    "cloud": ("clouds",),
    "fire truck": ("fire engine",),
}
_ADJECTIVES = ("big", "small", "bright", "dark", "little", "large", "colourful", "simple", "old", "new", "red", "blue", "green", "yellow")
_OPENINGS = ("a {adj} {tag} {ctx}", "the {tag} {ctx}", "a photo of a {tag} {ctx}", "there is a {adj} {tag} here", "my {tag} {ctx}")


def make_captions(n_lines: int, seed: int = 0) -> list[str]:
    """Captions about every class except OOV_TAG, whose word therefore never appears."""
    rng = random.Random(f"captions:{seed}")
    described = [t for t in TAGS if t != OOV_TAG]
    lines = []
    for i in range(n_lines):
        tag = described[i % len(described)]  # round robin: every tag word is frequent
        template = rng.choice(_OPENINGS)
        lines.append(template.format(adj=rng.choice(_ADJECTIVES), tag=tag, ctx=rng.choice(_CAPTION_CONTEXT[tag])))
    lines.extend(synonym_captions(n_lines, seed))
    rng.shuffle(lines)
    return lines


def synonym_captions(n_lines: int, seed: int = 0) -> list[str]:
    """A few captions per synonym (SYNONYMS), each in its tag's contexts."""
    rng = random.Random(f"synonyms:{seed}")
    per_word = max(8, n_lines // 150)
    lines = []
    for tag, words in SYNONYMS.items():
        for word in words:
            for _ in range(per_word):
                template = rng.choice(_OPENINGS)
                lines.append(template.format(adj=rng.choice(_ADJECTIVES), tag=word, ctx=rng.choice(_CAPTION_CONTEXT[tag])))
    return lines


def train_word2vec(
    sentences: list[list[str]], out_path: str | Path, *, dim: int, window: int, min_count: int, epochs: int, seed: int = 0,
    binary: bool = True, **options: Any,
) -> Any:
    """Skip-gram Word2Vec, seeded and on one thread (the only way gensim training is reproducible),
    saved in word2vec format (binary or text) at out_path; the trained KeyedVectors.

    The demo's vectors and tools/tuxpaint_set.py's are made here; options go to Word2Vec as they are.
    """
    from gensim.models import Word2Vec

    model = Word2Vec(
        sentences=sentences, vector_size=dim, window=window, min_count=min_count, sg=1, epochs=epochs, seed=seed, workers=1,
        **options,
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.wv.save_word2vec_format(str(out), binary=binary)
    return model.wv


def train_demo_word_vectors(captions_path: str | Path, out_path: str | Path, dim: int = 32, seed: int = 0) -> Path:
    """Word2Vec on the captions, saved in word2vec binary format (the format of real vectors)."""
    sentences = [line.split() for line in Path(captions_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    wv = train_word2vec(sentences, out_path, dim=dim, window=4, min_count=2, epochs=8, seed=seed, negative=5)
    log.info("word vectors: %d words, %d dims -> %s", len(wv), dim, out_path)
    return Path(out_path)
