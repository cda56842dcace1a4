"""Load any image (a path, encoded bytes or a PIL image) into a fully decoded RGB PIL image."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .conversation import ImageSource

DEFAULT_MAX_PIXELS: int = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS

ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

# What Pillow's decoders raise on damaged data (zlib.error and struct.error are not OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


class ImageError(ValueError):
    """An image that cannot be used: missing, not an image, corrupt, or too large."""


def load_image(
    source: ImageSource,
    *,
    background: tuple[int, int, int] = (0, 0, 0),
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """Decode `source` into a new, fully loaded RGB image with its EXIF orientation applied.

    Transparent pixels are composited onto `background`. Images over `max_pixels` (None: no limit) are
    refused from their header size, before any decoding. `min_side` lets JPEGs decode at a reduced scale
    (1/2, 1/4, 1/8) while both sides stay >= min_side: much faster for large photos bound for a small model
    input. A PIL image passed in is not modified.
    """
    name = _source_name(source)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, name)
        return _decode_to_rgb(source, background, name)
    if isinstance(source, bytes | bytearray | memoryview):
        return _open_and_decode(io.BytesIO(source), name, background, max_pixels, min_side)
    if isinstance(source, str | Path):
        return _open_and_decode(source, name, background, max_pixels, min_side)
    raise TypeError(f"cannot load an image from a {type(source).__name__}; pass a path, bytes or a PIL image")


def load_images(sources: Iterable[ImageSource], **kwargs) -> list[Image.Image]:
    """`load_image` on each source, with the same keyword arguments."""
    return [load_image(source, **kwargs) for source in sources]


def image_size(source: ImageSource) -> tuple[int, int]:
    """(width, height) of the image `load_image` makes from `source` (EXIF orientation applied), read from the
    header only: planning an image's tokens must not decode it."""
    name = _source_name(source)
    if isinstance(source, Image.Image):
        return _oriented_size(source)
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    elif not isinstance(source, str | Path):
        raise TypeError(f"cannot read an image size from a {type(source).__name__}; pass a path, bytes or a PIL image")
    with _open_lazily(source, name, DEFAULT_MAX_PIXELS) as image:
        return _oriented_size(image)


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    # EXIF orientations 5-8 turn the image a quarter: load_image transposes them, so width and height swap.
    turned = image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    return (image.height, image.width) if turned else image.size


def _source_name(source: ImageSource) -> str:
    if isinstance(source, Image.Image):
        return "<PIL image>"
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    return str(source)


def _open_lazily(fp: str | Path | io.BytesIO, name: str, max_pixels: int | None) -> Image.Image:
    """Image.open, which reads the header only, with each failure as an ImageError naming the source."""
    try:
        return Image.open(fp)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory, not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow checks its process-wide Image.MAX_IMAGE_PIXELS inside Image.open, before we see the size;
        # it is left untouched because changing it would change every other thread's limit too.
        raise ImageError(_pillow_limit_message(name, err, max_pixels)) from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image, or a format Pillow cannot read") from None
    except DECODE_ERRORS as err:
        raise ImageError(f"{name}: cannot open: {err}") from None


def _open_and_decode(
    fp: str | Path | io.BytesIO,
    name: str,
    background: tuple[int, int, int],
    max_pixels: int | None,
    min_side: int | None,
) -> Image.Image:
    with _open_lazily(fp, name, max_pixels) as image:
        _check_pixels(image.size, max_pixels, name)
        if min_side is not None:
            image.draft(None, (min_side, min_side))  # a no-op for formats other than JPEG
        return _decode_to_rgb(image, background, name)


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name}: {width} x {height} = {width * height} pixels is over the limit of {max_pixels} "
            "(raise max_pixels to allow it)"
        )


def _pillow_limit_message(name: str, err: Exception, max_pixels: int | None) -> str:
    if max_pixels is not None and max_pixels <= (Image.MAX_IMAGE_PIXELS or 0):
        return f"{name}: over the limit of {max_pixels} pixels ({err})"
    return (
        f"{name}: {err} Pillow applies its own process-wide limit before max_pixels; "
        f"raise PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS}) as well to allow it"
    )


def _decode_to_rgb(image: Image.Image, background: tuple[int, int, int], name: str) -> Image.Image:
    try:
        image.load()
        if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image, background)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name}: {err}") from None
    except DECODE_ERRORS as err:
        raise ImageError(f"{name}: corrupt or truncated image data: {err}") from None
    # Callers own the result: never hand back the caller's PIL image or one tied to an open file.
    return rgb.copy() if rgb is image else rgb


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if image.mode in HIGH_DEPTH_MODES:
        image = _to_8bit_gray(image)
    if image.mode == "La":
        image = image.convert("LA")  # Pillow converts premultiplied La only to LA
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba)
        return canvas
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        scaled = values.astype(np.float32) / 257  # 65535 -> 255
    elif image.mode == "I":
        scaled = _scale_integers(values)
    else:
        scaled = _scale_floats(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _scale_integers(values: np.ndarray) -> np.ndarray:
    # 32-bit images mostly carry 8- or 16-bit data (e.g. 16-bit PNGs converted to "I"); anything else is
    # stretched from its own min..max.
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low >= 0 and high <= 255:
        return values
    if low >= 0 and high <= 65535:
        return values.astype(np.float32) / 257
    return _stretch(values.astype(np.float64), low, high)


def _scale_floats(values: np.ndarray) -> np.ndarray:
    # Floats within 0..1 are read as normalised intensities, within 0..255 as 8-bit values (Pillow's own
    # L -> F convention); any other range (HDR, depth, signed data) is stretched from its min..max.
    finite = np.isfinite(values)
    values = np.where(finite, values, 0.0)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    if low >= 0 and high <= 1:
        return values * 255
    if low >= 0 and high <= 255:
        return values
    return _stretch(values, low, high)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high == low:
        return np.zeros_like(values)
    return (values - low) * (255 / (high - low))
