"""Tag normalisation, stable image ids, the deterministic split and tag-hash keys.

Pure functions with no heavy imports: the index stage, the site writer and the tests all share
them, so a tag or an image gets the same identity everywhere.
"""

from __future__ import annotations

import hashlib
import re
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


def normalize_tag(raw: str) -> str:
    """NFKC, casefold, whitespace collapsed to single spaces and trimmed."""
    text = unicodedata.normalize("NFKC", raw or "")
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
    if not any(ch.isalnum() for ch in tag):
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
