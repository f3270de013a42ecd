"""Which image formats crawled bytes may be decoded as, and the one way to open them.

Torch-free, so rank's thumbnails (on workers without torch) and extraction share it.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

# The raster formats crawled bytes may be decoded as (Pillow format ids). Pillow would otherwise
# try every plugin it has, and some hand the bytes to an external program: EPS runs Ghostscript
# (`gs`) on a file whose name says .jpg. Every Image.open of crawled bytes passes formats=this.
ALLOWED_IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")


def open_image(data: bytes) -> Image.Image:
    """Pillow's lazy open of crawled bytes, restricted to ALLOWED_IMAGE_FORMATS.

    Anything else (EPS, PDF, SVG, ICO, PSD, ...) raises UnidentifiedImageError naming the formats
    that are allowed: the failure row says why, and no external interpreter is ever started.
    """
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_IMAGE_FORMATS)
    except UnidentifiedImageError as exc:
        raise UnidentifiedImageError(f"{exc} (allowed formats: {', '.join(ALLOWED_IMAGE_FORMATS)})") from None
