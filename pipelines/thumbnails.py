"""Thumbnails for the site: each ranked image decoded once and shrunk to two upright JPEGs, the
grid's thumbnail (256 px on the long side) and the viewer's larger rendition (768 px).

Read through fetch's image store when it has the bytes (http(s) collections), else through Beam's
FileSystems; decoded with the allowed raster formats only. A thumbnail that cannot be made is a
failure row, and the page falls back to the image's public link (or to none): the ranking
survives.
"""

from __future__ import annotations

import io
from typing import Any, Iterator, Sequence

import apache_beam as beam
from PIL import Image, ImageOps

from export import publish, site_data
from model import schema
from model.image_formats import open_image
from pipelines import common, image_store, manifests

DEFAULT_THUMBNAIL_SIZE = 256
DEFAULT_VIEW_SIZE = 768  # the viewer's rendition: sharp up to about 760 CSS px
JPEG_QUALITY = 82
VIEW_JPEG_QUALITY = 80
FAILURES = "failures"
THUMBNAILS_WRITTEN = "thumbnails_written"
THUMBNAILS_FAILED = "thumbnails_failed"


def thumb_for(image_id: str, uri: str, thumbnails: bool, failed_thumbs: dict[str, Any], links: publish.PublicLinks) -> str | None:
    """The site's `thumb`: our thumbnail, or without one (flag off or it failed) the image's
    public link, or nothing: a local path is never published."""
    if thumbnails and image_id not in failed_thumbs:
        return site_data.thumbnail_path(image_id)
    return links.link(uri)


def view_for(image_id: str, thumb: str | None, thumbnails: bool) -> str | None:
    """The site's `view` (the viewer's larger rendition): made with the thumbnail, so present
    exactly when the item's thumbnail is ours."""
    return site_data.view_path(image_id) if thumbnails and thumb == site_data.thumbnail_path(image_id) else None


def _encode(rgb: Image.Image, size: int, quality: int) -> bytes:
    copy = rgb.copy()
    copy.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    copy.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def make_renditions(
    data: bytes, sizes: tuple[int, ...] = (DEFAULT_THUMBNAIL_SIZE, DEFAULT_VIEW_SIZE), quality: int = JPEG_QUALITY
) -> list[bytes]:
    """JPEG bytes of one image at each long side in `sizes` (never enlarged), upright, RGB, from
    a single decode: the largest is decoded and every smaller one shrunk from it."""
    with open_image(data) as img:
        # JPEG decoders can skip most of the work when asked for a reduced size up front.
        largest = max(sizes)
        img.draft("RGB", (largest, largest))
        rgb = _upright_rgb(img)
        rgb.thumbnail((largest, largest), Image.Resampling.LANCZOS)
        return [_encode(rgb, size, quality if size == min(sizes) else VIEW_JPEG_QUALITY) for size in sizes]


def _upright_rgb(img: Image.Image) -> Image.Image:
    upright = ImageOps.exif_transpose(img)
    if upright.mode in ("RGBA", "LA") or (upright.mode == "P" and "transparency" in upright.info):
        rgba = upright.convert("RGBA")
        # transparent areas become white, not whatever colour hides behind alpha 0
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    return upright.convert("RGB")


def make_thumbnail(data: bytes, size: int = DEFAULT_THUMBNAIL_SIZE, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an image shrunk to `size` on its long side (never enlarged), upright, RGB."""
    return make_renditions(data, (size,), quality)[0]


class MakeThumbnailFn(beam.DoFn):
    """(image_id, uri, stored bytes or None) -> a JPEG thumbnail and the viewer's larger rendition
    under the site, both from one decode; a failure is recorded, not raised.

    Main output: (image_id, error) of each failed thumbnail, so pages can fall back to the uri.
    """

    def __init__(self, site_root: str, size: int, stage: str, roots: Sequence[str] = (), view_size: int = DEFAULT_VIEW_SIZE):
        self._site_root = site_root
        self._size = size
        self._view_size = max(size, view_size)
        self._stage = stage
        self._roots = tuple(roots)  # index's allowed roots: a local image outside them is never read

    def _read(self, uri: str) -> bytes:
        manifests.check_confined(uri, self._roots)
        return common.read_bytes(uri)

    def process(self, element: tuple) -> Iterator[Any]:
        # (image_id, uri, stored bytes or None): fetch's store has the bytes of http(s) images
        image_id, uri, *stored = element
        try:
            data = image_store.image_bytes(uri, stored[0] if stored else None, self._read)
            thumb, view = make_renditions(data, (self._size, self._view_size))
            common.write_bytes(schema.out_path(self._site_root, site_data.view_path(image_id)), view, "image/jpeg")
            common.write_bytes(schema.out_path(self._site_root, site_data.thumbnail_path(image_id)), thumb, "image/jpeg")
        except Exception as exn:  # unreadable source, bad image, store error: the ranking survives
            name = type(exn).__name__
            common.counter(self._stage, THUMBNAILS_FAILED).inc()
            common.counter(self._stage, f"thumbnail_failed_{name}").inc()
            yield beam.pvalue.TaggedOutput(FAILURES, common.failure_row(self._stage, image_id, uri, name, f"thumbnail: {exn}"))
            yield image_id, name
            return
        common.counter(self._stage, THUMBNAILS_WRITTEN).inc()
