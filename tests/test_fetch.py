"""Stage fetch against a real HTTP server on 127.0.0.1 that serves images and faults."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from model import schema, tags
from pipelines import fetch, fetcher, image_store
from tests.builders import image_rows, write_images
from tests.conftest import draw_image
from tests.fetch_server import FaultServer, closed_port

# tiny timeouts and backoffs: the whole fault suite runs in a few seconds
FAST = [
    "--connect-timeout", "0.5", "--read-timeout", "0.3", "--timeout", "0.8", "--retries", "1",
    "--backoff", "0.05", "--max-retry-after", "0.3", "--max-bytes", "100000", "--threads", "8",
    "--per-host", "4", "--max-failure-rate", "1",
]  # fmt: skip

# path -> the reason it must end with (OK: a store row)
EXPECTED = {
    "/img/photo.jpg": fetcher.OK,
    "/img/graphic.png": fetcher.OK,
    "/dup/a.jpg": fetcher.OK,
    "/dup/b.jpg": fetcher.OK,
    "/redirect-ok": fetcher.OK,
    "/flaky": fetcher.OK,
    "/busy": fetcher.OK,
    "/scoped": fetcher.OK,
    "/missing": fetcher.HTTP_404,
    "/forbidden": fetcher.HTTP_4XX,
    "/always500": fetcher.HTTP_5XX_AFTER_RETRIES,
    "/slow": fetcher.TIMEOUT,
    "/trickle": fetcher.TIMEOUT,
    "/loop/a": fetcher.REDIRECT_LOOP,
    "/html": fetcher.NOT_AN_IMAGE,
    "/big": fetcher.TOO_LARGE,
    "/big-stream": fetcher.TOO_LARGE,
    "/reset": fetcher.CONNECTION,
    "/noindex": fetcher.ROBOTS_NOINDEX,
    "/noimageindex": fetcher.ROBOTS_NOINDEX,
}


def _images() -> dict[str, bytes]:
    return {
        "photo.jpg": draw_image(1, (300, 200)),
        "graphic.png": draw_image(3, (120, 90), "PNG"),
        "dup.jpg": draw_image(5, (64, 48)),
        "redirected.jpg": draw_image(7),
        "flaky.jpg": draw_image(9),
        "busy.jpg": draw_image(11),
        "scoped.jpg": draw_image(13),
    }


@pytest.fixture(scope="module")
def server():
    s = FaultServer(_images())
    yield s
    s.close()


def _store(out: Path) -> dict[str, dict]:
    files = sorted((out / schema.STORE_DIR).glob(f"{schema.STORE_PREFIX}-*.parquet"))
    rows = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []
    return {r[schema.URI]: r for r in rows}


def _failures(out: Path) -> dict[str, dict]:
    files = sorted((out / schema.FAILURES_DIR).glob(f"{fetch.STAGE}-*.parquet"))
    rows = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []
    return {r[schema.URI]: r for r in rows}


@pytest.fixture(scope="module")
def first_run(server: FaultServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fetch")
    local = root / "local.jpg"
    local.write_bytes(draw_image(21))
    refused = f"http://127.0.0.1:{closed_port()}/nothing-listens.jpg"
    uris = [server.url(p) for p in EXPECTED] + [str(local), refused]
    listed = [(u, "cat" if i % 2 else "dog") for i, u in enumerate(uris)]
    listed.append((server.url("/img/photo.jpg"), "kitten"))  # listed twice: fetched once
    out = root / "out"
    write_images(out, image_rows(listed))
    before = server.counts()
    report = fetch.run(["--out", str(out), *FAST], save_main_session=False)
    return {
        "out": out,
        "report": report,
        "uris": uris,
        "local": str(local),
        "refused": refused,
        "requests": server.counts() - before,
    }


def test_every_uri_ends_ok_or_with_its_reason(server: FaultServer, first_run: dict):
    out, report = first_run["out"], first_run["report"]
    stored, failed = _store(out), _failures(out)
    for path, reason in EXPECTED.items():
        uri = server.url(path)
        if reason == fetcher.OK:
            assert uri in stored and uri not in failed, path
        else:
            assert uri not in stored, path
            assert failed[uri][schema.ERROR] == reason, (path, failed[uri])
            assert failed[uri][schema.STAGE] == fetch.STAGE
            assert failed[uri][schema.IMAGE_ID] == tags.image_id_for(uri)
    assert failed[first_run["refused"]][schema.ERROR] == fetcher.CONNECTION
    # nothing lost: every distinct uri is in exactly one of the two, and the books balance
    assert set(stored) | set(failed) == set(first_run["uris"])
    assert not set(stored) & set(failed)
    assert report.rows_in == len(first_run["uris"])
    assert report.rows_in == report.rows_out + report.rows_failed + report.rows_skipped
    assert report.rows_out == len(stored)
    assert report.rows_skipped == 2 and report.details["skipped_robots_noindex"] == 2
    assert report.details["failed_too_large"] == 2 and report.details["failed_timeout"] == 2
    assert report.details[fetch.INDEX_ROWS] == len(first_run["uris"]) + 1
    saved = json.loads((out / schema.REPORTS_DIR / "fetch.json").read_text())
    assert saved["rows_out"] == report.rows_out


def test_store_rows_carry_sniffed_bytes_hash_size_and_status(server: FaultServer, first_run: dict):
    stored = _store(first_run["out"])
    photo = stored[server.url("/img/photo.jpg")]
    assert photo[schema.IMAGE_BYTES] == _images()["photo.jpg"]
    assert photo[schema.SHA256] == hashlib.sha256(photo[schema.IMAGE_BYTES]).hexdigest()
    assert (photo[schema.WIDTH], photo[schema.HEIGHT]) == (300, 200)
    assert photo[schema.CONTENT_TYPE] == "image/jpeg" and photo[schema.HTTP_STATUS] == 200
    assert photo[schema.FETCHED_AT] is not None and photo[schema.ORIGINAL_WIDTH] is None
    # the server calls the PNG image/png; the type comes from its bytes either way
    assert stored[server.url("/img/graphic.png")][schema.CONTENT_TYPE] == "image/png"
    assert stored[server.url("/redirect-ok")][schema.IMAGE_BYTES] == _images()["redirected.jpg"]
    # the same image at two urls: two rows (two ids), one content hash, counted as a duplicate
    a, b = stored[server.url("/dup/a.jpg")], stored[server.url("/dup/b.jpg")]
    assert a[schema.IMAGE_ID] != b[schema.IMAGE_ID] and a[schema.SHA256] == b[schema.SHA256]
    assert first_run["report"].details[fetch.DUPLICATE_CONTENT] == 1
    # a local uri passes by reference: a row without bytes, never read
    local = stored[first_run["local"]]
    assert local[schema.IMAGE_BYTES] is None and local[schema.HTTP_STATUS] is None
    assert first_run["report"].details[fetch.REFERENCES] == 1


def test_retries_only_where_they_can_help(server: FaultServer, first_run: dict):
    requests = first_run["requests"]
    # no retry for 4xx; one retry (--retries 1) for 5xx, 429 and timeouts
    assert requests["/missing"] == 1 and requests["/forbidden"] == 1
    assert requests["/always500"] == 2 and requests["/flaky"] == 2 and requests["/busy"] == 2
    assert requests["/slow"] == 2 and requests["/trickle"] == 2
    assert requests["/img/photo.jpg"] == 1  # listed twice, fetched once
    # the loop is caught the first time round: a -> b -> a
    assert requests["/loop/a"] == 1 and requests["/loop/b"] == 1
    # Retry-After: 1 honoured, capped at --max-retry-after 0.3
    first, second = server.times("/busy")[:2]
    assert 0.25 <= second - first < 0.9


def test_requests_name_the_project(server: FaultServer, first_run: dict):
    agents = {r.user_agent for r in server.requests}
    assert agents and all(a.startswith("imgsearch-fetch/") for a in agents)


def test_rerun_fetches_nothing_new_and_retry_failed_retries_only_failures(server: FaultServer, first_run: dict):
    out = first_run["out"]
    before = server.count()
    again = fetch.run(["--out", str(out), *FAST], save_main_session=False)
    assert server.count() == before  # not a single request
    assert again.rows_in == first_run["report"].rows_in and again.rows_out == 0 and again.rows_failed == 0
    assert again.rows_skipped == again.rows_in
    assert again.details[fetch.SKIPPED_FETCHED] == first_run["report"].rows_out
    stored_before = _store(out)

    before_retry = server.counts()
    retried = fetch.run(["--out", str(out), *FAST, "--retry-failed"], save_main_session=False)
    asked = server.counts() - before_retry
    # nothing that is stored was asked for again; the failed and skipped ones were
    assert not [p for p, r in EXPECTED.items() if r == fetcher.OK and asked[p]]
    assert asked["/missing"] == 1 and asked["/always500"] == 2 and asked["/noindex"] == 1
    assert retried.rows_in == again.rows_in
    assert retried.details[fetch.SKIPPED_FETCHED] == len(stored_before)
    assert retried.rows_in == retried.rows_out + retried.rows_failed + retried.rows_skipped
    # one failure row per uri still failing: the earlier run's rows were replaced
    failed = _failures(out)
    assert len(failed) == len([r for r in EXPECTED.values() if r != fetcher.OK]) + 1
    files = list((out / schema.FAILURES_DIR).glob("fetch-*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == len(failed)
    # the store still reads whole: the old shards beside this run's
    assert set(_store(out)) == set(stored_before)


# ---------------------------------------------------------------------------
# Options: --resize-to, --copy-local
# ---------------------------------------------------------------------------
def test_resize_to_stores_a_jpeg_and_records_the_original_size(server: FaultServer, tmp_path: Path):
    local = tmp_path / "big.png"
    local.write_bytes(draw_image(31, (400, 100), "PNG"))
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    uris = [server.url("/img/photo.jpg"), server.url("/img/graphic.png"), str(local), str(broken)]
    out = tmp_path / "out"
    write_images(out, image_rows([(u, "cat") for u in uris]))
    report = fetch.run(["--out", str(out), *FAST, "--resize-to", "150", "--copy-local"], save_main_session=False)
    stored = _store(out)
    photo = stored[server.url("/img/photo.jpg")]
    assert (photo[schema.WIDTH], photo[schema.HEIGHT]) == (150, 100)
    assert (photo[schema.ORIGINAL_WIDTH], photo[schema.ORIGINAL_HEIGHT]) == (300, 200)
    assert photo[schema.CONTENT_TYPE] == "image/jpeg"
    assert Image.open(io.BytesIO(photo[schema.IMAGE_BYTES])).size == (150, 100)
    # already small enough: stored as it came
    graphic = stored[server.url("/img/graphic.png")]
    assert graphic[schema.IMAGE_BYTES] == _images()["graphic.png"] and graphic[schema.ORIGINAL_WIDTH] is None
    # --copy-local: the local file's bytes are in the store too (resized), the broken one failed
    copied = stored[str(local)]
    assert copied[schema.IMAGE_BYTES] is not None and (copied[schema.WIDTH], copied[schema.HEIGHT]) == (150, 38)
    assert _failures(out)[str(broken)][schema.ERROR] == fetcher.NOT_AN_IMAGE
    assert report.details[fetch.RESIZED] == 2 and report.details[fetch.COPIED_LOCAL] == 1


# ---------------------------------------------------------------------------
# Helpers, called directly
# ---------------------------------------------------------------------------
def test_retry_after_parses_seconds_and_dates():
    assert fetcher.parse_retry_after("7") == 7.0
    assert fetcher.parse_retry_after(None) is None and fetcher.parse_retry_after("soon") is None
    assert fetcher.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    f = fetcher.Fetcher(fetcher.FetchConfig(backoff_s=1.0, max_retry_after_s=5.0))
    assert f.backoff(1, None) == 1.0 and f.backoff(2, None) == 2.0
    assert f.backoff(1, 3.0) == 3.0 and f.backoff(1, 3600.0) == 5.0  # capped


def test_robots_directives():
    assert fetcher.robots_forbids(["noindex"]) == "noindex"
    assert fetcher.robots_forbids(["noarchive, NoImageIndex"]) == "noimageindex"
    assert fetcher.robots_forbids(["none"]) == "none"
    assert fetcher.robots_forbids(["googlebot: noindex"]) is None
    assert fetcher.robots_forbids(["imgsearch: noindex"]) == "noindex"
    assert fetcher.robots_forbids(["unavailable_after: 25 Jun 2010 15:00:00 PST"]) is None
    assert fetcher.robots_forbids([]) is None


def test_exceptions_are_classified():
    import socket

    import urllib3

    assert fetcher.classify_exception(urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out")) == (fetcher.TIMEOUT, True)
    assert fetcher.classify_exception(urllib3.exceptions.ConnectTimeoutError()) == (fetcher.TIMEOUT, True)
    assert fetcher.classify_exception(socket.gaierror(-2, "Name or service not known")) == (fetcher.DNS, False)
    if hasattr(urllib3.exceptions, "NameResolutionError"):
        exc = urllib3.exceptions.NameResolutionError("nowhere.invalid", None, socket.gaierror(-2, "unknown"))
        assert fetcher.classify_exception(exc) == (fetcher.DNS, False)
    assert fetcher.classify_exception(urllib3.exceptions.ProtocolError("reset")) == (fetcher.CONNECTION, True)


def test_image_store_bytes_come_from_the_store_or_the_uri():
    assert image_store.image_bytes("http://h/x.jpg", b"stored") == b"stored"
    assert image_store.image_bytes("/data/x.jpg", None, read=lambda uri: b"read " + uri.encode()) == b"read /data/x.jpg"
    with pytest.raises(image_store.NotFetched):
        image_store.image_bytes("https://h/x.jpg", None)


# ---------------------------------------------------------------------------
# Downstream: extract-images reads the store instead of fetching again
# ---------------------------------------------------------------------------
def test_extract_images_reads_bytes_from_the_store(server: FaultServer, tmp_path: Path):
    from pipelines import extract_images as ei

    local = tmp_path / "local.jpg"
    local.write_bytes(draw_image(41))
    uris = [server.url("/img/photo.jpg"), server.url("/img/graphic.png"), server.url("/missing"), str(local)]
    out = tmp_path / "out"
    write_images(out, image_rows([(u, "cat") for u in uris]))
    fetch.run(["--out", str(out), *FAST], save_main_session=False)
    stored = _store(out)

    before = server.count()
    report = ei.run(
        ["--out", str(out), "--image-model", "efficientnet_lite0", "--weights", "random", "--batch-size", "4",
         "--precision", "fp32", "--max-failure-rate", "1"],
        save_main_session=False,
    )  # fmt: skip
    assert server.count() == before  # not one request: the bytes came from the store
    assert report.rows_out == 3 and report.rows_failed == 1
    assert report.details["failed_NotFetched"] == 1
    assert report.details[image_store.STORE_HITS] == 2 and report.details[image_store.STORE_MISSES] == 2
    features = pa.concat_tables([pq.read_table(p) for p in (out / schema.IMAGE_FEATURES_DIR).glob("features-*.parquet")])
    hashes = dict(zip(features[schema.IMAGE_ID].to_pylist(), features[schema.CONTENT_HASH].to_pylist()))
    # the same image id, the same bytes: extraction hashed exactly what the store holds
    for uri in uris[:2]:
        assert hashes[stored[uri][schema.IMAGE_ID]] == stored[uri][schema.SHA256]
    assert tags.image_id_for(str(local)) in hashes  # the reference row: read from its path
    # a driver's few ids (a calibration sample): the bytes of those the store holds
    wanted = [stored[uris[0]][schema.IMAGE_ID], tags.image_id_for(str(local)), "no-such-id"]
    assert image_store.stored_bytes(str(out), wanted) == {wanted[0]: stored[uris[0]][schema.IMAGE_BYTES]}


def test_demo_corpus_served_over_http_goes_through_fetch(tmp_path: Path):
    """What `imgsearch demo --via-http` does before extract-images: serve, index http uris, fetch."""
    from pipelines import index as index_stage
    from pipelines.demo import command, corpus

    demo = corpus.generate_demo_corpus(tmp_path / "corpus", n_images=30, seed=0)
    server = command.start_corpus_server(demo.manifest.parent, 0)  # port 0 here; the demo's is fixed
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        manifest = command.rewrite_to_http(demo.manifest, tmp_path / "manifest_http.jsonl", base)
        truth = command.rewrite_to_http(demo.ground_truth, tmp_path / "truth_http.jsonl", base)
        out = tmp_path / "out"
        index_stage.run(["--input", str(manifest), "--out", str(out)], save_main_session=False)
        report = fetch.run(["--out", str(out), *FAST], save_main_session=False)
    finally:
        server.shutdown()
        server.server_close()
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert all(r["uri"].startswith(base + "/") for r in rows)
    assert {json.loads(line)["uri"] for line in truth.read_text().splitlines()} <= {r["uri"] for r in rows}
    # every picture is stored; of the corpus's 3 broken files the empty one and the text fail
    # not_an_image, and the truncated JPEG (a sound header) is stored: extract-images fails its decode
    assert report.rows_out == 30 + 1 and report.rows_failed == 2 and report.rows_in == report.rows_out + report.rows_failed + report.rows_skipped
    reasons = {r[schema.ERROR] for r in _failures(out).values()}
    assert reasons <= {fetcher.NOT_AN_IMAGE}, reasons


def test_bench_fetch_phase_measures_the_stage_against_a_local_server(tmp_path: Path):
    from pipelines.bench import command

    result = command.run(["--fetch", "only", "--images", "6", "--work-dir", str(tmp_path), "--fetch-threads", "4"])
    assert result.mode == "fetch" and result.rows == []
    fetched = result.fetch
    assert fetched["images"] == 6 and fetched["raw"]["ok"] == 6 and fetched["stage"]["ok"] == 6
    assert fetched["stage"]["requests"] == 6 and fetched["server_cpu_seconds"] >= 0
    text = result.table()
    assert "img/s/core" in text and "what bounds it:" in text and "not the internet" in text
