"""Stage `rank`: score every tag's images out of sample, rank them, evaluate and publish.

    imgsearch rank --out OUT [--ranker combined|matcher|neighbours] [--ground-truth GT] ...

Reads the images table, the image and text features, the folds train wrote, the neighbour
signals and the ONNX towers export wrote. Projects images and tags through every matcher member
(pipelines/towers.py), joins each image with its fold and signals, scores it under each of its
tags with the member that held it out, and ranks each tag by the per-tag combination of
model/scoring.py (ties by index order). Writes, for a new site version V:

    OUT/site/data/v/V/rank/...                        every tag's ranking pages
    OUT/site/thumbs/...                               thumbnails (pipelines/thumbnails.py)
    OUT/rankings/.staging-V/, OUT/failures/.staging-V/ the rankings and failures, until published

then, on the driver: the health gates, the evaluation of what is about to be published
(export/evaluate.py), and the publish itself (export/publish.py): tag shards, front end, the
manifest (the pointer to V) last, then the rankings and failures swapped into place and old
versions pruned. A refused run changes nothing that is live.

No torch here: workers that rank need only onnxruntime, Pillow and Beam (tests/test_rank.py
runs the stage with torch blocked).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadFromParquet, WriteToParquet

from export import discovery, evaluate, publish, related_words, similar, site_data
from model import features, schema, scoring, storage
from pipelines import common, image_store, ranking, thumbnails, towers

log = logging.getLogger(__name__)

STAGE = "rank"

# ---------------------------------------------------------------------------
# Composite transforms
# ---------------------------------------------------------------------------
def _key_row_by_image(row: dict[str, Any]) -> tuple[str, tuple[str, str, int, str]]:
    return row[schema.IMAGE_ID], (row[schema.URI], row[schema.TAG], int(row[schema.ORDINAL]), row[schema.SPLIT])


def _key_fold_by_image(row: dict[str, Any]) -> tuple[str, int]:
    return row[schema.IMAGE_ID], int(row[schema.FOLD])


def _key_signals_by_image(row: dict[str, Any]) -> tuple[str, tuple]:
    return row[schema.IMAGE_ID], (
        row[schema.TAG],
        row[schema.AGREEMENT],
        row[schema.AGREEMENT_WEIGHTED],
        row[schema.MEAN_FEATURE],
        row.get(schema.CENTROID_MARGIN),
    )


class RankImages(beam.PTransform):
    """The whole ranking: {"images", "image_features", "text_features", "folds", "signals"} row
    PCollections in, {"rankings": RANKINGS_SCHEMA rows, "failures": FAILURES_SCHEMA rows} out.

    Side effects: ranking pages (and thumbnails unless thumbnail_size is None) under site_root.
    """

    def __init__(
        self,
        *,
        image_tower_uri: str,
        text_tower_uri: str,
        site_root: str,
        page_size: int = site_data.PAGE_SIZE,
        batch_size: int = towers.DEFAULT_BATCH_SIZE,
        thumbnail_size: int | None = thumbnails.DEFAULT_THUMBNAIL_SIZE,
        folds: int,
        ranker: str = scoring.DEFAULT_RANKER,
        data_root: str = site_data.DATA_DIR,
        links: publish.PublicLinks = publish.PublicLinks(),
        store_shards: Sequence[str] = (),
    ):
        super().__init__()
        self._store_shards = list(store_shards)
        self._folds = folds
        self._ranker = ranker
        self._data_root = data_root
        self._links = links
        self._image_tower_uri = image_tower_uri
        self._text_tower_uri = text_tower_uri
        self._site_root = site_root
        self._page_size = page_size
        self._batch_size = batch_size
        self._thumbnail_size = thumbnail_size

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        pipeline = inputs["images"].pipeline
        images = self._project(inputs["image_features"], inputs["text_features"])
        rows = inputs["images"] | "KeyRowsByImage" >> beam.Map(_key_row_by_image)
        folds = inputs["folds"] | "KeyFoldsByImage" >> beam.Map(_key_fold_by_image)
        signals = inputs["signals"] | "KeySignalsByImage" >> beam.Map(_key_signals_by_image)
        scored = (
            {"rows": rows, "embeddings": images["embeddings"], "failed": images["failed"], "fold": folds, "signals": signals}
            | "JoinByImage" >> beam.CoGroupByKey()
            | "Score"
            >> beam.ParDo(ranking.ScoreImageFn(self._folds), beam.pvalue.AsDict(images["text_vectors"])).with_outputs(
                ranking.THUMBS, ranking.FAILURES, main=ranking.SCORED
            )
        )
        failures = [images["text_failures"], scored[ranking.FAILURES]]

        with_thumbnails = self._thumbnail_size is not None
        if with_thumbnails:
            thumbs = (
                scored[ranking.THUMBS]
                | "JoinImageStore" >> image_store.JoinImageStore(self._store_shards, STAGE)
            ) | "Thumbnails" >> beam.ParDo(
                thumbnails.MakeThumbnailFn(self._site_root, self._thumbnail_size, STAGE, self._links.roots)
            ).with_outputs(thumbnails.FAILURES, main="failed")
            failed_thumbs = thumbs.failed
            failures.append(thumbs[thumbnails.FAILURES])
        else:
            failed_thumbs = pipeline | "NoThumbnails" >> beam.Create([])

        ranked = (
            scored[ranking.SCORED]
            | "GroupByTag" >> beam.GroupByKey()
            | "RankTags"
            >> beam.ParDo(
                ranking.RankTagFn(self._page_size, with_thumbnails, self._ranker, self._data_root, self._links),
                beam.pvalue.AsDict(failed_thumbs),
            ).with_outputs(ranking.PAGES, main="rankings")
        )
        _ = ranked[ranking.PAGES] | "WritePages" >> beam.ParDo(ranking.WritePageFn(self._site_root))
        rankings = ranked.rankings
        return {"rankings": rankings, "failures": failures | "MergeFailures" >> beam.Flatten()}

    def _project(self, image_features: beam.PCollection, text_features: beam.PCollection) -> dict[str, beam.PCollection]:
        images = image_features | "ProjectImages" >> towers.ProjectImages(self._image_tower_uri, self._batch_size)
        tags = text_features | "ProjectTags" >> towers.ProjectTags(self._text_tower_uri, STAGE, self._batch_size)
        return {**images, "text_vectors": tags["vectors"], "text_failures": tags["failures"]}


# ---------------------------------------------------------------------------
# Driver-side checks (publishing itself lives in export/publish.py)
# ---------------------------------------------------------------------------
def _require(pattern: str, what: str) -> list[str]:
    found = common.glob(pattern)
    if not found:
        raise FileNotFoundError(f"rank needs {what}: nothing matches {pattern}")
    return found


def _feature_dim(files: Sequence[str]) -> int | None:
    """The image features' dimension, from the first shard's footer."""
    with FileSystems.open(files[0]) as f:
        field = pq.read_schema(f).field(schema.EMBEDDING)
    return getattr(field.type, "list_size", None)


def check_inputs_fit_the_towers(image_tower: str, image_feature_files: Sequence[str]) -> list[str]:
    """Problems that would make every image fail in the towers (features of another encoder)."""
    expected = towers.load_onnx_session(image_tower).get_inputs()[0].shape[-1]
    dim = _feature_dim(image_feature_files)
    if isinstance(expected, int) and dim is not None and dim != expected:
        return [
            f"the image features are {dim}-d but the matcher's image tower takes {expected}-d "
            "(features of another encoder: rerun train and export on them, or extract-images with the trained encoder)"
        ]
    return []


def _staged(out: str, directory: str, prefix: str, version: str) -> storage.StagedOutput:
    """Where this run writes rankings/ or failures/rank-* until it is allowed to publish:
    <dir>/.staging-V/, a folder readers never match (they match <dir>/<prefix>-*.parquet only).
    Its commit replaces <dir>'s <prefix>-* shards with the staged ones."""
    directory = schema.out_path(out, directory)
    return storage.StagedOutput(
        directory, [f"{prefix}-*{schema.PARQUET_SUFFIX}"], staging=schema.out_path(directory, f".staging-{version}")
    )


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class RankResult(common.StageReport):
    """rank's accounting plus the evaluation of what it published."""

    evaluation: evaluate.EvaluateResult | None = None

    def report(self) -> str:
        """The evaluation table, published ranking first, for a terminal."""
        return "" if self.evaluation is None else self.evaluation.report()

    def to_json(self) -> dict[str, Any]:
        d = common.StageReport.to_json(self)
        d.pop("evaluation", None)
        return d

def get_args_parser() -> argparse.ArgumentParser:
    parser = common.stage_parser("rank", __doc__)
    parser.add_argument(
        "--no-thumbnails", action="store_true", help="make no thumbnails; the site shows the original image URIs"
    )
    parser.add_argument("--thumbnail-size", type=int, default=thumbnails.DEFAULT_THUMBNAIL_SIZE, help="long side in pixels")
    parser.add_argument("--page-size", type=int, default=site_data.PAGE_SIZE, help="ranking items per site page")
    parser.add_argument("--batch-size", type=int, default=towers.DEFAULT_BATCH_SIZE, help="onnxruntime batch size")
    parser.add_argument(
        "--ranker",
        default=scoring.DEFAULT_RANKER,
        choices=scoring.PUBLISHABLE,
        help="what orders a tag: combined (matcher + neighbour agreement, the default), matcher, or neighbours",
    )
    parser.add_argument(
        "--ground-truth",
        default=None,
        help="JSON lines {uri, tag, true_tag}: the evaluation of the published rankings then has AUC and P@10",
    )
    parser.add_argument(
        "--public-base-url",
        default=None,
        help="URL under which the collection's local images are served: an image's link is this plus its path "
        "under the manifest's folder. Without it the site links thumbnails only and shows that relative path",
    )
    parser.add_argument(
        "--public-gcs", action="store_true", help="link gs:// images as https://storage.googleapis.com/... (public buckets)"
    )
    common.add_max_failure_rate(parser)
    parser.add_argument(
        "--min-tag-share",
        type=float,
        default=publish.DEFAULT_MIN_TAG_SHARE,
        help="refuse to publish unless at least this share of the index's tags got a ranking",
    )
    parser.add_argument(
        "--keep-versions", type=int, default=publish.DEFAULT_KEEP_VERSIONS, help="published versions kept (the live one included)"
    )
    # beyond the rankings: copies folded, related words, more like this (export/discovery.py)
    parser.add_argument(
        "--related-vocab",
        type=int,
        default=related_words.DEFAULT_VOCAB,
        help="precompute the nearest tags of this many most frequent words of the word vectors (0: none)",
    )
    parser.add_argument(
        "--word-vectors", default=None, help="the word vectors for related words (default: those extract-text read)"
    )
    parser.add_argument(
        "--duplicate-similarity",
        type=float,
        default=similar.DEFAULT_NEAR_THRESHOLD,
        help="neighbours at or above this cosine are copies of one picture, shown once (same content hash always is)",
    )
    return parser


def read_folds_count(out: str) -> int:
    """How many cross-fitted members the exported towers hold (export.json, written by export)."""
    path = schema.out_path(out, schema.EXPORT_JSON)
    if not common.exists(path):
        raise FileNotFoundError(f"rank needs {path} (run export)")
    folds = json.loads(common.read_bytes(path).decode("utf-8")).get("folds")
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"{path} names no cross-fitted towers (folds={folds!r}): rerun train and export")
    return folds


def run(argv: list[str] | None = None, save_main_session: bool = True, test_pipeline=None) -> RankResult:
    args, beam_options = common.split_args(get_args_parser(), argv)
    out = args.out
    if args.page_size < 1 or args.batch_size < 1 or args.thumbnail_size < 1 or args.keep_versions < 1:
        raise ValueError("--page-size, --batch-size, --thumbnail-size and --keep-versions must be positive")

    images_pattern = schema.shard_pattern(out, schema.IMAGES_DIR, schema.IMAGES_PREFIX)
    image_features_pattern = schema.shard_pattern(out, schema.IMAGE_FEATURES_DIR, schema.IMAGE_FEATURES_PREFIX)
    text_features_pattern = schema.shard_pattern(out, schema.TEXT_FEATURES_DIR, schema.TEXT_FEATURES_PREFIX)
    _require(images_pattern, "the images table (run index)")
    image_feature_files = _require(image_features_pattern, "image features (run extract-images)")
    features.check_feature_shards(out, STAGE, image_feature_files)
    text_feature_files = _require(text_features_pattern, "text features (run extract-text)")
    image_tower = schema.out_path(out, schema.IMAGE_TOWER_ONNX)
    text_tower = schema.out_path(out, schema.TEXT_TOWER_ONNX)
    for tower in (image_tower, text_tower):
        if not common.exists(tower):
            raise FileNotFoundError(f"rank needs {tower} (run export)")
    folds = read_folds_count(out)
    folds_pattern = schema.shard_pattern(out, schema.FOLDS_DIR, schema.FOLDS_PREFIX)
    _require(folds_pattern, "the training folds (run train)")
    signals_pattern = schema.shard_pattern(out, schema.SIGNALS_DIR, schema.SIGNALS_PREFIX)
    has_signals = bool(common.glob(signals_pattern))
    if not has_signals and args.ranker != scoring.MATCHER:
        raise FileNotFoundError(
            f"--ranker {args.ranker} needs neighbour agreement: nothing matches {signals_pattern} "
            "(run `imgsearch neighbours`, or rank with --ranker matcher)"
        )
    misfit = check_inputs_fit_the_towers(image_tower, image_feature_files)
    if misfit:
        refused = common.StageReport(stage=STAGE, details={"refused": "; ".join(misfit)})
        refused.save(out)
        raise publish.PublishRefused(refused, "not ranked, the live site is unchanged: " + "; ".join(misfit))

    site_root = schema.out_path(out, schema.SITE_DIR)
    version = publish.new_version()
    data_root = site_data.version_root(version)
    links = publish.PublicLinks(
        roots=publish.read_allowed_roots(out), base_url=args.public_base_url, public_gcs=args.public_gcs
    )
    thumbnails = not args.no_thumbnails
    staged_rankings = _staged(out, schema.RANKINGS_DIR, schema.RANKINGS_PREFIX, version)
    staged_failures = _staged(out, schema.FAILURES_DIR, STAGE, version)

    pipeline = test_pipeline or beam.Pipeline(options=common.make_options(beam_options, save_main_session))
    inputs = {
        "images": pipeline
        | "ReadImages"
        >> ReadFromParquet(images_pattern, columns=[schema.IMAGE_ID, schema.URI, schema.TAG, schema.ORDINAL, schema.SPLIT]),
        "image_features": pipeline
        | "ReadImageFeatures" >> ReadFromParquet(image_features_pattern, columns=[schema.IMAGE_ID, schema.EMBEDDING])
        | "OneRowPerImage" >> common.OnePerKey(),
        "text_features": pipeline
        | "ReadTextFeatures"
        >> ReadFromParquet(text_features_pattern, columns=[schema.TAG, schema.EMBEDDING, schema.STATUS]),
        "folds": pipeline | "ReadFolds" >> ReadFromParquet(folds_pattern),
        "signals": (
            pipeline | "ReadSignals" >> ReadFromParquet(signals_pattern)
            if has_signals
            else pipeline | "NoSignals" >> beam.Create([])
        ),
    }
    ranked = inputs | "RankImages" >> RankImages(
        image_tower_uri=image_tower,
        text_tower_uri=text_tower,
        site_root=site_root,
        page_size=args.page_size,
        batch_size=args.batch_size,
        thumbnail_size=args.thumbnail_size if thumbnails else None,
        folds=folds,
        ranker=args.ranker,
        data_root=data_root,
        links=links,
        store_shards=image_store.store_shards(out),
    )
    _ = ranked["rankings"] | "WriteRankings" >> WriteToParquet(
        staged_rankings.path(schema.RANKINGS_PREFIX),
        schema.RANKINGS_SCHEMA,
        codec="snappy",
        file_name_suffix=schema.PARQUET_SUFFIX,
    )
    _ = ranked["failures"] | "WriteFailures" >> common.WriteFailures(staged_failures.path(STAGE))
    _result, counters, seconds = common.run_pipeline(pipeline, STAGE)
    # copies of one picture appear once in a tag's ranking, their copies listed (export/discovery.py)
    duplicates = discovery.fold_duplicates(
        out,
        site_root=site_root,
        data_root=data_root,
        rankings_dir=staged_rankings.root,
        page_size=args.page_size,
        near_threshold=args.duplicate_similarity,
    )

    rankings = publish.read_rankings(common.glob(staged_rankings.path(f"{schema.RANKINGS_PREFIX}-*")))
    entries, by_index_tags, ranked_images = publish.tag_entries_from_rankings(rankings, args.page_size)
    details = dict(tags=len(entries), oov_tags=by_index_tags, ranked_images=ranked_images, ranker=args.ranker, version=version)
    details["duplicates"] = duplicates
    report = common.report_from_counters(STAGE, counters, seconds, **details)
    health = publish.check_health(
        report,
        rankings=rankings,
        index_tags=_indexed_tags(images_pattern),
        max_failure_rate=args.max_failure_rate,
        min_tag_share=args.min_tag_share,
        without_features=counters.get(ranking.SKIPPED_NO_FEATURES, 0),
    )
    report.details.update(health.facts)
    if not health.healthy:
        # nothing of this run goes live: its pages, rankings and failures are dropped
        report.details["refused"] = "; ".join(health.problems)
        report.save(out)
        publish.discard_version(site_root, version)
        staged_rankings.discard()
        staged_failures.discard()
        publish.refuse(report, health)

    # what the site is about to show, measured before the manifest makes it live
    site_report = schema.out_path(site_root, data_root, schema.REPORT_DIR)
    evaluation = evaluate.evaluate(
        out,
        args.ground_truth,
        args.ranker,
        site_report_dir=site_report,
        site_thumb_prefix="../../../../",
        rankings_dir=staged_rankings.root,
    )
    failures = publish.count_failures(out)
    failures[STAGE] = sum(
        storage.open_parquet(p).metadata.num_rows for p in common.glob(staged_failures.path(f"{STAGE}-*"))
    )
    # the home page, related words, more like this, "probably" strips (export/discovery.py)
    extras = discovery.publish_extras(
        out,
        site_root=site_root,
        data_root=data_root,
        rankings=rankings,
        entries=entries,
        folds=folds,
        related_vocab=args.related_vocab,
        word_vectors=args.word_vectors,
        ground_truth=args.ground_truth,
    )
    report.details.update(extras.facts)
    if extras.strip_metrics is not None:
        evaluate.record_metrics(out, "probably_strips", extras.strip_metrics)
    manifest = publish.publish_site(
        site_root,
        version=version,
        entries=entries,
        images=counters.get(ranking.IMAGES_INDEXED, 0),
        ranked_images=ranked_images,
        by_index_tags=by_index_tags,
        model=publish.model_info(out, image_feature_files, text_feature_files),
        thumbnails=thumbnails,
        page_size=args.page_size,
        failures=failures,
        report=f"{data_root}/{schema.REPORT_DIR}/index.html",
        extra=extras.manifest,
    )
    # the site is live; the rankings and failures that describe it follow
    staged_rankings.commit()
    staged_failures.commit()
    removed = publish.prune_versions(site_root, args.keep_versions)
    report.details.update(build=manifest["build"], versions_removed=len(removed))
    report.save(out)
    log.info("published %d tags (%d by index order) to %s, version %s", len(entries), by_index_tags, site_root, version)
    return RankResult(**dataclasses.asdict(report), evaluation=evaluation)


def _indexed_tags(images_pattern: str) -> int:
    """Distinct tags of the images table (one small column, read on the driver)."""
    tags: set[str] = set()
    for path in common.glob(images_pattern):
        with FileSystems.open(path) as f:
            tags.update(pq.read_table(f, columns=[schema.TAG]).column(schema.TAG).to_pylist())
    return len(tags)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().summary_line())
