"""model/tags.py: normalisation, rejection reasons, stable ids, the split and tag keys."""

from __future__ import annotations

import re

import pytest

from model import schema, tags


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Cat", "cat"),
        ("  Red   Car \t", "red car"),
        ("red\ncar", "red car"),
        ("ＣＡＴ", "cat"),  # full-width letters: NFKC
        ("ﬁsh", "fish"),  # the fi ligature: NFKC
        ("Straße", "strasse"),  # casefold, not lower
        ("café", "café"),  # e + combining acute composes to one code point
        ("Ⅻ", "xii"),  # roman numeral twelve: NFKC then casefold
        ("", ""),
    ],
)
def test_normalize_tag(raw: str, expected: str) -> None:
    assert tags.normalize_tag(raw) == expected


def test_normalize_tag_is_idempotent_and_handles_none() -> None:
    for raw in ["  Fire  TRUCK ", "Straße", "ＣＡＴ", "Ⅻ"]:
        once = tags.normalize_tag(raw)
        assert tags.normalize_tag(once) == once
    assert tags.normalize_tag(None) == ""  # type: ignore[arg-type]


def test_tag_problem_reasons() -> None:
    assert tags.tag_problem("cat") is None
    assert tags.tag_problem("fire truck") is None
    assert tags.tag_problem("") == tags.REJECT_EMPTY
    assert tags.tag_problem("x" * (tags.MAX_TAG_CHARS + 1)) == tags.REJECT_TOO_LONG
    assert tags.tag_problem("x" * tags.MAX_TAG_CHARS) is None
    assert tags.tag_problem("!!! ---") == tags.REJECT_NO_WORD
    assert tags.tag_problem("cat\x00") == tags.REJECT_CONTROL
    # whitespace-only raw tags normalise to empty
    assert tags.tag_problem(tags.normalize_tag(" \t ")) == tags.REJECT_EMPTY


def test_image_id_is_stable_and_uri_sensitive() -> None:
    uri = "gs://bucket/images/0001.jpg"
    first = tags.image_id_for(uri)
    assert first == tags.image_id_for(uri)
    assert re.fullmatch(r"[0-9a-f]{%d}" % tags.IMAGE_ID_HEX_CHARS, first)
    assert first != tags.image_id_for("gs://bucket/images/0002.jpg")


def test_image_id_known_value() -> None:
    # pinned, so a change of derivation (which would orphan every stored id) cannot go unnoticed
    assert tags.image_id_for("/data/a.jpg") == "c82383262a76ab32"


def test_split_is_deterministic_and_about_twenty_percent_test() -> None:
    ids = [tags.image_id_for(f"/img/{i}.jpg") for i in range(20000)]
    splits = [tags.split_for(i) for i in ids]
    assert splits == [tags.split_for(i) for i in ids]
    assert set(splits) == {schema.SPLIT_TRAIN, schema.SPLIT_TEST}
    fraction = splits.count(schema.SPLIT_TEST) / len(splits)
    assert 0.19 < fraction < 0.21


def test_tag_key_is_lower_hex_and_case_sensitive() -> None:
    for tag in ["cat", "CON", "con", "../x", "x" * 300, "猫"]:
        key = tags.tag_key(tag)
        assert re.fullmatch(r"[0-9a-f]{%d}" % tags.TAG_KEY_HEX_CHARS, key), tag
    assert tags.tag_key("CON") != tags.tag_key("con")
    # ...but the index only ever stores normalised tags, and CON normalises to con
    assert tags.tag_key(tags.normalize_tag("CON")) == tags.tag_key("con")
    assert tags.tag_key("cat") == tags.tag_key("cat")
