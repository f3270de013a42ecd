"""Reading and decoding one image for extract-images: its bytes from a uri (or the image store),
then a uint8 crop (Pillow) or, for the device decoder, the raw bytes of a plain JPEG.

Local uris must name regular files (a FIFO blocks its reader, /dev/zero never ends); each image's
read and its decode get their own timeout, and an image that fails goes to the FAILED output with
its exception class: one bad image never fails the job.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import threading
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import apache_beam as beam
import torch
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from model import encoders, preprocess
from pipelines import common, image_store, manifests

STAGE = "extract-images"  # whose counters and failure rows these are
FAILED = "failed"  # tag of the failure outputs
DEFAULT_IMAGE_TIMEOUT_S = 30.0
NOT_A_REGULAR_FILE = "NotARegularFile"  # a failure row's `error` for a local uri that is no regular file
ANIMATED_IMAGES = "animated_images"  # images with more than one frame (the first is encoded)
ANIMATED_FRAMES = "animated_frames"  # their frames, all together


class ImageKey(NamedTuple):
    """What travels beside a tensor through RunInference (its key), so no join is needed after."""

    image_id: str
    uri: str
    content_hash: str
    width: int
    height: int


class ImageTimeout(TimeoutError):
    """An image's read or decode took longer than --image-timeout (a FIFO, a hung mount, a file
    that decodes forever); the image fails and the stage goes on."""


class NotARegularFile(OSError):
    """A local uri that names a FIFO, a device, a socket or a folder: reading it may block forever
    or never end."""


def is_local(uri: str) -> bool:
    return FileSystems.get_scheme(uri) in (None, "file")


def check_regular_file(uri: str) -> None:
    """Local uris must name regular files: a FIFO blocks its reader, /dev/zero never ends."""
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    mode = os.stat(path).st_mode  # follows symlinks: a link to a regular file is fine
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a device or socket"
        raise NotARegularFile(errno.EINVAL, f"{uri} is {kind}, not a regular file: only regular files are read")


def read_uri(uri: str) -> bytes:
    """The bytes of one image (local files checked to be regular files first)."""
    if is_local(uri):
        check_regular_file(uri)
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def read_confined(uri: str, roots: Sequence[str] = ()) -> bytes:
    """read_uri, after checking that a local uri stays inside the allowed roots that index
    recorded (symbolic links resolved: a link out of them is OutsideAllowedRoot, never opened)."""
    if roots and is_local(uri):
        manifests.check_confined(uri, roots)
    return read_uri(uri)


def call_with_timeout(fn: Callable[[], Any], timeout_s: float | None, what: str) -> Any:
    """fn() on a daemon thread, or ImageTimeout after timeout_s (None or <= 0: no limit).

    A read stuck in the kernel cannot be interrupted from Python; the thread is left behind. It
    is a daemon thread, so it never holds up the worker's exit, and the stage moves on.
    """
    if not timeout_s or timeout_s <= 0:
        return fn()
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread as it is
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"{STAGE}-timed", daemon=True).start()
    if not done.wait(timeout_s):
        raise ImageTimeout(f"{what} took longer than {timeout_s:g} s (--image-timeout); abandoned")
    if "error" in box:
        raise box["error"]
    return box["value"]


def device_decodable(data: bytes) -> tuple[bool, int, int]:
    """Whether the device decoder can take these bytes as they are, and the displayed size.

    Only baseline-orientation RGB or grey JPEGs go raw to the device; anything Pillow must fix
    (EXIF rotation, CMYK, transparency, other formats) is decoded on the CPU. Reads the header only.
    """
    with preprocess.open_image(data) as img:
        preprocess.check_pixel_limit(img.size)
        width, height = preprocess.displayed_size(img)
        orientation = img.getexif().get(preprocess.EXIF_ORIENTATION, 1)
        ok = img.format == "JPEG" and img.mode in ("RGB", "L") and orientation == 1
        return ok, width, height


class ReadImageFn(beam.DoFn):
    """(image_id, uri) -> (image_id, uri, bytes); unreadable files go to the FAILED output.

    A read that takes longer than timeout_s (a FIFO, a hung mount) fails that image alone.
    """

    def __init__(self, timeout_s: float | None = DEFAULT_IMAGE_TIMEOUT_S, roots: Sequence[str] = ()):
        self._timeout_s = timeout_s
        self._roots = tuple(roots)

    def _read(self, uri: str) -> bytes:
        return call_with_timeout(functools.partial(read_confined, uri, self._roots), self._timeout_s, f"reading {uri}")

    def process(self, ref: tuple) -> Iterator[Any]:
        image_id, uri, *stored = ref  # (image_id, uri[, the image store's bytes or None]): issue 11
        try:
            data = image_store.image_bytes(uri, stored[0], self._read) if stored else self._read(uri)
        except Exception as exc:  # one unreadable file must not fail the job
            yield beam.pvalue.TaggedOutput(FAILED, common.record_failure(STAGE, image_id, uri, exc, str(exc)))
            return
        yield image_id, uri, data


class DecodeImageFn(beam.DoFn):
    """(image_id, uri, bytes) -> (ImageKey, payload); undecodable images go to FAILED.

    The payload is a uint8 CHW crop made with Pillow, or, when decoding on the device, the raw
    bytes of a plain JPEG as a 1-D uint8 tensor (FeatureExtractor decodes those in a batch).
    """

    def __init__(
        self,
        encoder_name: str,
        weights: str,
        decode_on_device: bool = False,
        timeout_s: float | None = DEFAULT_IMAGE_TIMEOUT_S,
    ):
        self._encoder_name = encoder_name
        self._weights = weights
        self._decode_on_device = decode_on_device
        self._timeout_s = timeout_s
        self._crop: preprocess.CropSpec | None = None
        self._animated = common.counter(STAGE, ANIMATED_IMAGES)
        self._animated_frames = common.counter(STAGE, ANIMATED_FRAMES)

    def setup(self) -> None:
        transform, _ = encoders.preprocessing(self._encoder_name, self._weights)
        self._crop = preprocess.CropSpec.from_transform(transform)

    def _payload(self, data: bytes) -> tuple[torch.Tensor, str, int, int, int]:
        """(payload, content hash, width, height, frames)."""
        if self._decode_on_device:
            raw_ok, width, height = device_decodable(data)
            if raw_ok:  # a plain JPEG: one frame
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return raw, preprocess.content_hash(data), width, height, 1
        decoded = preprocess.decode_image(data, self._crop.resize_size, keep_mode=True)
        crop = preprocess.crop_uint8(decoded, self._crop)
        return crop, decoded.content_hash, decoded.width, decoded.height, decoded.frames

    def process(self, element: tuple[str, str, bytes]) -> Iterator[Any]:
        image_id, uri, data = element
        try:
            payload, digest, width, height, frames = call_with_timeout(
                functools.partial(self._payload, data), self._timeout_s, f"decoding {uri}"
            )
        except Exception as exc:  # corrupt, truncated, not an allowed format, too many pixels...
            yield beam.pvalue.TaggedOutput(FAILED, common.record_failure(STAGE, image_id, uri, exc, str(exc)))
            return
        if frames > 1:
            self._animated.inc()
            self._animated_frames.inc(frames)
        yield ImageKey(image_id, uri, digest, width, height), payload
