"""Data cut into files named by a hash of their keys, so the page fetches one small file per lookup.

Used for what the page looks up by a key it cannot list in advance: a word that is not a tag
(related words), an image id (more like this), a tag's key (the "probably" strips). A key's
shard is `fnv1a32(key) % shards`, computed the same way by site/js/data.js (`fnv1a32`, `hashedShardPath`): FNV-1a
needs no crypto API, so it works on a plain-http host too. File names are shard numbers, never
the key's text, so hostile words are safe. The number of shards is chosen from the encoded size
so that no file passes its byte budget; every shard is written, empty ones too, so the page
never asks for a file that is not there.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from export import site_data

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193
MAX_SHARDS = 1 << 22


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a of the UTF-8 bytes (site/js/data.js `fnv1a32` agrees)."""
    h = FNV_OFFSET
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h * FNV_PRIME) & 0xFFFFFFFF
    return h


def shard_of(key: str, shards: int) -> int:
    return fnv1a32(key) % shards


def shard_path(data_root: str, kind: str, shard: int) -> str:
    return f"{data_root}/{kind}/{shard:05d}.json"


def _entry_bytes(key: str, value: Any) -> int:
    return len(site_data.encode_json({key: value})) - 1  # one "k":v pair and its comma


def cut(
    entries: dict[str, Any],
    *,
    field: str,
    target_bytes: int,
    budget_bytes: int,
) -> tuple[int, list[dict[str, Any]]]:
    """(shard count, one object per shard {"v", field: {key: value}}) with every shard's encoded
    size under budget_bytes; about target_bytes a shard on average."""
    sizes = {k: _entry_bytes(k, v) for k, v in entries.items()}
    total = sum(sizes.values())
    shards = max(1, -(-total // max(1, target_bytes)))
    while True:
        per_shard = [0] * shards
        for key, size in sizes.items():
            per_shard[shard_of(key, shards)] += size
        if max(per_shard) + 32 <= budget_bytes or shards >= MAX_SHARDS:
            break
        shards *= 2
    bodies: list[dict[str, Any]] = [{"v": site_data.SITE_SCHEMA_VERSION, field: {}} for _ in range(shards)]
    for key in sorted(entries):
        bodies[shard_of(key, shards)][field][key] = entries[key]
    return shards, bodies


def write(
    write_bytes: Callable[[str, bytes], None],
    data_root: str,
    kind: str,
    bodies: Iterable[dict[str, Any]],
) -> list[int]:
    """Write every shard (data_root/kind/SSSSS.json); returns each file's size in bytes."""
    sizes = []
    for shard, body in enumerate(bodies):
        encoded = site_data.encode_json(body)
        write_bytes(shard_path(data_root, kind, shard), encoded)
        sizes.append(len(encoded))
    return sizes


def size_facts(sizes: list[int]) -> dict[str, int]:
    """Total, largest and mean file size, for the rank report."""
    if not sizes:
        return {"files": 0, "total_bytes": 0, "max_bytes": 0, "mean_bytes": 0}
    return {"files": len(sizes), "total_bytes": sum(sizes), "max_bytes": max(sizes), "mean_bytes": sum(sizes) // len(sizes)}
