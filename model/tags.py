"""Tag normalisation, stable image ids, the deterministic split and tag-hash keys.

Pure functions with no heavy imports: the index stage, the site writer and the tests all share
them, so a tag or an image gets the same identity everywhere.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata

from model import schema

MAX_TAG_CHARS = 200
TEST_FRACTION_PERCENT = 20
IMAGE_ID_HEX_CHARS = 16
TAG_KEY_HEX_CHARS = 20

_WHITESPACE = re.compile(r"\s+", re.UNICODE)

# Reasons a tag is rejected, recorded in failures/ as the `error` column.
REJECT_EMPTY = "EmptyTag"
REJECT_TOO_LONG = "TagTooLong"
REJECT_CONTROL = "TagHasControlCharacters"
REJECT_NO_WORD = "TagHasNoWordCharacters"


INVISIBLE_CATEGORY = "Cf"  # format characters: zero-width space/joiners, BOM, soft hyphen, bidi marks


# Emoji sequences: a ZERO WIDTH JOINER between two emoji is part of one picture (👩🏽‍💻 is
# woman, skin tone, ZWJ, laptop), not an invisible character. site/js/text.js keeps the same ZWJs.
ZWJ = "\u200d"
VARIATION_SELECTOR_EMOJI = "\ufe0f"
COMBINING_KEYCAP = "\u20e3"
SKIN_TONES = range(0x1F3FB, 0x1F400)  # EMOJI MODIFIER FITZPATRICK TYPE-1-2 .. -6 (category Sk)
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)  # two make a flag


def _emoji_base(ch: str) -> bool:
    return unicodedata.category(ch) == "So"


def _emoji_end(ch: str) -> bool:
    """A character that may end one emoji before a joiner: the emoji, its skin tone, its VS16."""
    return _emoji_base(ch) or ord(ch) in SKIN_TONES or ch in (VARIATION_SELECTOR_EMOJI, COMBINING_KEYCAP)


def _joins_emoji(text: str, i: int) -> bool:
    return text[i] == ZWJ and 0 < i < len(text) - 1 and _emoji_end(text[i - 1]) and _emoji_base(text[i + 1])


def has_invisible(text: str) -> bool:
    return any(unicodedata.category(ch) == INVISIBLE_CATEGORY and not _joins_emoji(text, i) for i, ch in enumerate(text))


def strip_invisible(text: str) -> str:
    """Without format characters (category Cf): a tag that looks the same must be the same tag.
    A zero width joiner between two emoji stays: it makes them one picture."""
    return "".join(ch for i, ch in enumerate(text) if unicodedata.category(ch) != INVISIBLE_CATEGORY or _joins_emoji(text, i))


def is_one_emoji(tag: str) -> bool:
    """Whether a tag is one emoji sequence (one grapheme cluster): an emoji with its skin tone,
    VS16 or keycap, several joined by ZWJ (👩🏽‍💻), or a flag (two regional indicators)."""
    codes = [ord(ch) for ch in tag]
    if len(codes) == 2 and all(c in REGIONAL_INDICATORS for c in codes):
        return True
    i, n = 0, len(tag)
    while i < n:
        if not _emoji_base(tag[i]) or ord(tag[i]) in REGIONAL_INDICATORS:
            return False
        i += 1
        while i < n and (ord(tag[i]) in SKIN_TONES or tag[i] in (VARIATION_SELECTOR_EMOJI, COMBINING_KEYCAP)):
            i += 1
        if i < n:
            if tag[i] != ZWJ:
                return False
            i += 1
            if i == n:
                return False
    return n > 0


def normalize_tag(raw: str) -> str:
    """NFKC, invisible format characters removed, casefold, whitespace collapsed and trimmed.

    site/js/text.js normalizeTag does the same steps in the browser (with FOLD_JS_PATH's table
    for the characters where casefold and JavaScript's toLowerCase differ).
    """
    text = unicodedata.normalize("NFKC", raw or "")
    text = strip_invisible(text)
    text = text.casefold()
    # casefold can produce sequences that NFKC would compose differently, so normalise again
    text = unicodedata.normalize("NFKC", text)
    return _WHITESPACE.sub(" ", text).strip()


def tag_problem(tag: str) -> str | None:
    """Why a normalised tag is unusable, or None when it is fine."""
    if not tag:
        return REJECT_EMPTY
    if len(tag) > MAX_TAG_CHARS:
        return REJECT_TOO_LONG
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") for ch in tag):
        return REJECT_CONTROL
    if not any(ch.isalnum() for ch in tag) and not is_one_emoji(tag):
        return REJECT_NO_WORD
    return None


def image_id_for(uri: str) -> str:
    """Stable id derived from the source URI, so reruns and other runners agree."""
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:IMAGE_ID_HEX_CHARS]


def split_for(image_id: str) -> str:
    """Deterministic train/test split from the image id (about 20% test)."""
    bucket = int(hashlib.sha256(("split:" + image_id).encode("ascii")).hexdigest()[:8], 16) % 100
    return schema.SPLIT_TEST if bucket < TEST_FRACTION_PERCENT else schema.SPLIT_TRAIN


def _bucket(salt: str, image_id: str, buckets: int) -> int:
    return int(hashlib.sha256((salt + image_id).encode("utf-8")).hexdigest()[:8], 16) % buckets


def fold_for(image_id: str, folds: int) -> int:
    """The cross-fitting fold of an image (0..folds-1), independent of its split (another salt)."""
    return _bucket("fold:", image_id, folds)


def in_validation(image_id: str, member: int, percent: int) -> bool:
    """Whether an image is in a matcher member's early-stopping validation part (its own salt,
    so each member holds out a different part of its training data)."""
    return _bucket(f"val{member}:", image_id, 100) < percent


def tag_key(tag: str) -> str:
    """File-name key for a tag: lower-case hex of its SHA-256, safe on every file system.

    Never derived from the tag's characters, so `../x`, `CON` or a 300-byte tag are all safe,
    and lower-case hex cannot collide on case-insensitive stores.
    """
    return hashlib.sha256(tag.encode("utf-8")).hexdigest()[:TAG_KEY_HEX_CHARS]


# ---------------------------------------------------------------------------
# The browser's half of normalize_tag: JavaScript has no casefold. Its toLowerCase agrees with
# Python's str.lower(), so the page needs only the characters whose casefold differs from lower()
# (ß -> ss, ς -> σ, ᾳ -> αι, Cherokee, ...): FOLD_JS_PATH holds them, generated from this Python.
# ---------------------------------------------------------------------------
FOLD_JS_PATH = "site/js/fold.js"  # relative to the repository root


def casefold_exceptions() -> dict[str, str]:
    """Every code point whose casefold() is not its lower() (surrogates have neither)."""
    table = {}
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        folded = ch.casefold()
        if folded != ch.lower():
            table[ch] = folded
    return table


def fold_module_source() -> str:
    """The text of FOLD_JS_PATH (an ES module); regenerate it with `python -m model.tags`."""
    pairs = json.dumps(sorted(casefold_exceptions().items()), ensure_ascii=True, separators=(",", ":"))
    return (
        "// Generated by `python -m model.tags` from Python's str.casefold (Unicode "
        f"{unicodedata.unidata_version}); do not edit.\n"
        "// The characters whose casefold differs from toLowerCase: normalizeTag (text.js) folds\n"
        "// them with this table and every other character with toLowerCase, as Python does.\n"
        f"export const UNICODE_VERSION = '{unicodedata.unidata_version}';\n"
        f"export const FOLD = new Map({pairs});\n"
    )


if __name__ == "__main__":
    import logging
    from pathlib import Path

    logging.basicConfig(level=logging.INFO)
    target = Path(__file__).resolve().parent.parent / FOLD_JS_PATH
    target.write_text(fold_module_source(), encoding="ascii")
    logging.getLogger(__name__).info("wrote %s", target)
