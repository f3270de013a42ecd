"""Publishing a site that a bad run cannot break: versioned data, health gates, a pointer last.

`rank` writes one publish's ranking pages under OUT/site/data/v/<version>/ while the live site
keeps reading the previous version; then, on the driver, this module

1. checks the run's health (`check_health`): the failure rate, the share of the index's tags
   that got a ranking, finite scores. A refusal raises `PublishRefused` (exit 3) and the
   live site stays exactly as it was;
2. writes the version's tag shards and the front end, and the manifest last: the manifest names
   the version (`data`), so switching it is the whole switch, one small object on local disk and
   on gs:// alike; a run killed before that leaves the previous site live and whole;
3. removes versions older than the last `keep` (`prune_versions`).

Thumbnails (thumbs/<ii>/<image_id>.jpg) are named by image id and shared by every version.

No local path is published: `PublicLinks` turns an image's uri into what the page shows.
No Beam and no torch here: fsspec (model/storage.py) reaches local paths and gs:// alike.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import posixpath
import secrets
import urllib.parse
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from export import site_data
from model import schema, storage
from model.report import StageReport, StageRefused

log = logging.getLogger(__name__)

DEFAULT_KEEP_VERSIONS = 2
DEFAULT_MIN_TAG_SHARE = 0.9
GCS_PUBLIC_ENDPOINT = "https://storage.googleapis.com/"


class PublishRefused(StageRefused):
    """The run is unhealthy: nothing of it was made live."""


# ---------------------------------------------------------------------------
# Public links: no local path leaves the build machine
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PublicLinks:
    """How an image's uri appears on the site.

    http(s) uris are links as they are. gs:// uris become public https links only when asked
    (`public_gcs`), otherwise they are shown as text. A local path becomes `base_url` + its path
    relative to the allowed root that holds it (the manifest's folder, by default) when a base
    URL is given, otherwise that relative path as text; a path under no root shows its file name.
    """

    roots: tuple[str, ...] = ()
    base_url: str | None = None
    public_gcs: bool = False

    def relative(self, path: str) -> str:
        for root in sorted(self.roots, key=len, reverse=True):
            prefix = root.rstrip("/") + "/"
            if path.startswith(prefix):
                return path[len(prefix) :]
        return posixpath.basename(path)

    def display(self, uri: str) -> str:
        """What the page shows as the image's source (a link where `link` gives one)."""
        link = self.link(uri)
        if link is not None:
            return link
        if "://" in uri:
            return uri
        return self.relative(uri)

    def link(self, uri: str) -> str | None:
        """A public http(s) address for the image, or None where there is none to give."""
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        if scheme in ("http", "https"):
            return uri
        if scheme == "gs":
            return GCS_PUBLIC_ENDPOINT + urllib.parse.quote(uri[len("gs://") :]) if self.public_gcs else None
        if scheme and scheme != "file":
            return None
        if self.base_url is None:
            return None
        path = uri[len("file://") :] if scheme == "file" else uri
        return self.base_url.rstrip("/") + "/" + urllib.parse.quote(self.relative(path))


def read_allowed_roots(out: str) -> tuple[str, ...]:
    """The local roots index confined the manifest's uris to (index/source.json)."""
    path = schema.out_path(out, schema.INDEX_SOURCE_JSON)
    if not storage.exists(path):
        return ()
    return tuple(storage.read_json(path).get("roots") or ())


# ---------------------------------------------------------------------------
# Reading what the pipeline wrote
# ---------------------------------------------------------------------------
def read_rankings(files: Sequence[str], columns: list[str] | None = None) -> pa.Table | None:
    tables = [t for t in (storage.open_parquet(f).read(columns=columns) for f in files) if t.num_rows]
    return pa.concat_tables(tables) if tables else None


def tag_entries_from_rankings(rankings: pa.Table | None, page_size: int) -> tuple[list[tuple[str, int, int]], int, int]:
    """(tag, image count, page count) of every ranked tag, the count of tags in index order
    (no signal scored them) and the number of distinct ranked images."""
    if rankings is None:
        return [], 0, 0
    grouped = rankings.group_by(schema.TAG).aggregate([(schema.IMAGE_ID, "count"), (schema.SCORE, "count")])
    entries, by_index = [], 0
    for tag, count, scored in zip(
        grouped[schema.TAG].to_pylist(),
        grouped[f"{schema.IMAGE_ID}_count"].to_pylist(),
        grouped[f"{schema.SCORE}_count"].to_pylist(),
    ):
        entries.append((tag, count, site_data.page_count(count, page_size)))
        by_index += scored == 0
    return entries, by_index, pc.count_distinct(rankings[schema.IMAGE_ID]).as_py()


def _json_if_present(path: str) -> Any:
    if not storage.exists(path):
        return None
    try:
        return storage.read_json(path)
    except ValueError:
        log.warning("ignoring unreadable %s", path)
        return None


def _summary_only(obj: Any) -> Any:
    """Scalars and nested objects of scalars: means, not per-tag lists, go in the manifest."""
    if isinstance(obj, dict):
        kept = {str(k): _summary_only(v) for k, v in obj.items() if not isinstance(v, list)}
        return {k: v for k, v in kept.items() if v is not None}
    if isinstance(obj, (int, float, str, bool)):
        return obj
    return None


def _file_metadata(files: Sequence[str]) -> dict[bytes, bytes]:
    return (storage.open_parquet(files[0]).schema_arrow.metadata or {}) if files else {}


def _public_name(value: str | None) -> str | None:
    """A file's name without its folder: the published site must not reveal local paths."""
    return value.rstrip("/").rsplit("/", 1)[-1] if value else value


def model_info(out: str, image_feature_files: Sequence[str], text_feature_files: Sequence[str]) -> dict[str, Any]:
    """What ranked: the image encoder (from the feature metadata), the matcher's ONNX towers,
    the word vectors and the evaluation's mean figures. Names only, never local paths."""
    image_meta = _file_metadata(image_feature_files)
    text_meta = _file_metadata(text_feature_files)

    def text(meta: dict[bytes, bytes], key: bytes) -> str | None:
        return meta[key].decode("utf-8") if key in meta else None

    dim = text(image_meta, schema.META_DIM)
    info: dict[str, Any] = {
        "encoder": text(image_meta, schema.META_ENCODER),
        "weights": _public_name(text(image_meta, schema.META_WEIGHTS)),
        "precision": text(image_meta, schema.META_PRECISION),
        "dim": int(dim) if dim and dim.isdigit() else dim,
        "word_vectors": _public_name(text(text_meta, schema.META_WORD_VECTORS)),
        "matcher": {"runtime": "onnxruntime"},
    }
    export = _json_if_present(schema.out_path(out, schema.EXPORT_JSON))
    if export is not None:
        towers = export.get("towers", {})
        info["matcher"].update(
            {
                "out_dim": towers.get("image", {}).get("output_dim"),
                "folds": export.get("folds"),
                "onnx_max_abs_diff": max((t.get("max_abs_diff", 0.0) for t in towers.values()), default=None),
            }
        )
    metrics = _json_if_present(schema.out_path(out, schema.METRICS_JSON))
    if metrics is not None and isinstance(metrics.get("subsets"), dict):
        rankers = (metrics["subsets"].get("all") or {}).get("rankers") or {}
        info["metrics"] = {"published_ranker": metrics.get("published_ranker"), "images": "all", "rankers": _summary_only(rankers)}
    return info


def count_failures(out: str) -> dict[str, int]:
    """Failure rows per stage, from the failures/<stage>-*.parquet shards (footers only)."""
    counts: dict[str, int] = {}
    for path in storage.list_files(schema.out_path(out, schema.FAILURES_DIR), schema.PARQUET_SUFFIX):
        name = path.rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        stage = name.rsplit("-", 3)[0]
        counts[stage] = counts.get(stage, 0) + storage.open_parquet(path).metadata.num_rows
    return counts


# ---------------------------------------------------------------------------
# Health gates
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Health:
    problems: list[str]
    facts: dict[str, Any]

    @property
    def healthy(self) -> bool:
        return not self.problems


def check_health(
    report: StageReport,
    *,
    rankings: pa.Table | None,
    index_tags: int,
    max_failure_rate: float,
    min_tag_share: float,
    without_features: int = 0,
) -> Health:
    """Whether this run may replace the live site: few failures, most tags ranked, finite scores.

    Rows whose image has no features (extract-images failed or never ran on it) count against
    --max-failure-rate like failed rows: they are missing from the site all the same."""
    problems: list[str] = []
    missing = report.rows_failed + without_features
    rate = missing / report.rows_in if report.rows_in else 0.0
    ranked_tags = pc.count_distinct(rankings[schema.TAG]).as_py() if rankings is not None else 0
    share = ranked_tags / index_tags if index_tags else 1.0
    facts = {"failure_rate": round(rate, 4), "rows_without_features": without_features, "tags_ranked": ranked_tags, "tags_indexed": index_tags, "tag_share": round(share, 4)}
    if rate > max_failure_rate:
        what = f"{report.rows_failed} of {report.rows_in} rows failed"
        if without_features:
            what = (
                f"{missing} of {report.rows_in} rows failed or have no image features ({without_features} without: "
                "run extract-images, which extracts only the images that lack them)"
            )
        problems.append(f"{what} ({rate:.1%} > --max-failure-rate {max_failure_rate:.1%})")
    if ranked_tags == 0 or share < min_tag_share:
        problems.append(f"only {ranked_tags} of {index_tags} indexed tags were ranked ({share:.1%} < --min-tag-share {min_tag_share:.0%})")
    if rankings is not None:
        scores = rankings[schema.SCORE].to_numpy(zero_copy_only=False).astype(float)
        bad = int(sum(1 for v in scores if not (math.isnan(v) or math.isfinite(v))))
        if bad:
            problems.append(f"{bad} published scores are infinite")
    return Health(problems=problems, facts=facts)


def refuse(report: StageReport, health: Health) -> None:
    raise PublishRefused(
        report,
        "not published, the live site is unchanged: " + "; ".join(health.problems),
    )


# ---------------------------------------------------------------------------
# Versions and the pointer
# ---------------------------------------------------------------------------
def new_version() -> str:
    """A sortable, unique name for one publish: UTC time plus randomness."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{secrets.token_hex(3)}"


def live_version(site_root: str) -> str | None:
    """The version the live manifest points at (None: no site, or an unversioned one)."""
    manifest = _json_if_present(schema.out_path(site_root, site_data.MANIFEST_PATH))
    data = (manifest or {}).get("data", "")
    prefix = site_data.VERSIONS_DIR + "/"
    return data[len(prefix) :] if isinstance(data, str) and data.startswith(prefix) else None


def _versions(site_root: str) -> list[str]:
    root = schema.out_path(site_root, site_data.VERSIONS_DIR)
    fs, path = storage.fs_and_path(root)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p))


def prune_versions(site_root: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` versions (never the live one), and the data of an
    unversioned site from before versioning; returns the versions removed."""
    live = live_version(site_root)
    versions = _versions(site_root)
    keep_set = set(versions[-keep:]) | ({live} if live else set())
    removed = [v for v in versions if v not in keep_set]
    for version in removed:
        storage.delete_tree(schema.out_path(site_root, site_data.version_root(version)))
    for legacy in ("rank", "tags"):
        storage.delete_tree(schema.out_path(site_root, site_data.DATA_DIR, legacy))
    return removed


def discard_version(site_root: str, version: str) -> None:
    """A refused run's pages: never live, so they go."""
    storage.delete_tree(schema.out_path(site_root, site_data.version_root(version)))


def site_manifest(
    *,
    shard_index: list[dict[str, Any]],
    entries: list[tuple[str, int, int]],
    images: int,
    ranked_images: int,
    by_index_tags: int,
    model: dict[str, Any],
    thumbnails: bool,
    page_size: int,
    failures: dict[str, int],
    report: str | None,
    data_root: str,
    extra: dict[str, Any] | None = None,
    generated_at: str | None = None,
) -> dict[str, Any]:
    """The manifest of one publish, from what publish_site is given and the tag shards' index
    (site_data.tag_shards); `generated_at` is now unless given.

    The browser tests' sites (tests/site_fixture.py) build theirs with it too, so theirs is
    the published shape."""
    return site_data.build_manifest(
        shard_index=shard_index,
        images=images,
        tags=len(entries),
        ranked_images=ranked_images,
        oov_tags=by_index_tags,
        model=model,
        thumbnails=thumbnails,
        page_size=page_size,
        generated_at=generated_at or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        extra_counts={"failures": sum(failures.values())},
        report=report,
        data_root=data_root,
        extra=extra,
    )


def publish_site(
    site_root: str,
    *,
    version: str,
    entries: list[tuple[str, int, int]],
    images: int,
    ranked_images: int,
    by_index_tags: int,
    model: dict[str, Any],
    thumbnails: bool,
    page_size: int,
    failures: dict[str, int],
    report: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The version's tag shards, the front end, then the manifest (the pointer) last.

    `extra`: what the manifest says about the version's other data files (export/discovery.py)."""
    data_root = site_data.version_root(version)
    shard_index, shard_files = site_data.tag_shards(entries, data_root=data_root)
    for relpath, body in shard_files:
        # named by their content: a cache may keep them for good
        storage.write_bytes(
            schema.out_path(site_root, relpath),
            body,
            content_type="application/json",
            cache_control=site_data.IMMUTABLE_CACHE_CONTROL,
        )
    for relpath, body in site_data.static_site_files():
        storage.write_bytes(schema.out_path(site_root, relpath), body, content_type=site_data.content_type(relpath))
    manifest = site_manifest(
        shard_index=shard_index,
        entries=entries,
        images=images,
        ranked_images=ranked_images,
        by_index_tags=by_index_tags,
        model=model,
        thumbnails=thumbnails,
        page_size=page_size,
        failures=failures,
        report=report,
        data_root=data_root,
        extra=extra,
    )
    storage.write_bytes(
        schema.out_path(site_root, site_data.MANIFEST_PATH),
        site_data.encode_json(manifest),
        content_type="application/json",
        cache_control=site_data.MANIFEST_CACHE_CONTROL,
    )
    return manifest
