"""Image URLs of a request -> encoded image bytes, within the server's limits.

data: URLs always; file:// URLs and plain paths only below --allowed-local-media-path (symlinks and `..`
resolved first); http(s) only with --allow-remote-images, with a byte limit and a total time limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from urllib.parse import urlparse
from urllib.request import url2pathname

import httpx
from PIL import Image

from minillava.data.images import DECODE_ERRORS
from minillava.serve.config import ServeConfig
from minillava.serve.errors import APIError, bad_request


def too_large(message: str, param: str) -> APIError:
    return APIError(413, message, "image_too_large", param)


def read_image_url(url: str, config: ServeConfig, param: str) -> bytes:
    """The encoded image an image_url part points to; `param` names the part in error messages."""
    scheme = urlparse(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
    if scheme == "data":
        data = _read_data_url(url, config.max_image_bytes, param)
    elif scheme in ("http", "https"):
        data = _read_remote(url, config, param)
    elif scheme in ("file", ""):
        data = _read_local(url, config, param)
    else:
        raise bad_request(f"{param}: unsupported image URL scheme {scheme!r} (use data:, http(s): or file:)",
                          "invalid_image_url", param)
    check_image_size(data, config.max_image_pixels, param)
    return data


def check_image_size(data: bytes, max_pixels: int, param: str) -> None:
    """Refuse non-images (400) and images over the pixel limit (413) from the header, before decoding."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as err:
        raise too_large(f"{param}: {err}", param) from None
    except Image.UnidentifiedImageError:
        raise bad_request(f"{param}: not an image, or a format Pillow cannot read", "invalid_image", param) from None
    except DECODE_ERRORS as err:
        raise bad_request(f"{param}: cannot read the image: {err}", "invalid_image", param) from None
    if width * height > max_pixels:
        raise too_large(f"{param}: {width} x {height} pixels is over the limit of {max_pixels}", param)


def _read_data_url(url: str, limit: int, param: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise bad_request(f"{param}: a data URL must look like data:image/png;base64,<data>", "invalid_image_url",
                          param)
    mime = header[len("data:"):-len(";base64")]
    if mime and not mime.lower().startswith("image/"):
        raise bad_request(f"{param}: the data URL holds {mime!r}, not an image", "invalid_image_url", param)
    payload = "".join(payload.split())  # some encoders wrap lines
    if len(payload) // 4 * 3 > limit + 2:  # refuse before decoding
        raise too_large(f"{param}: the image is over the limit of {limit} bytes", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param}: the data URL is not valid base64", "invalid_image_url", param) from None
    if len(data) > limit:
        raise too_large(f"{param}: the image is {len(data)} bytes, over the limit of {limit}", param)
    return data


def _read_local(url: str, config: ServeConfig, param: str) -> bytes:
    root = config.allowed_local_media_path
    if root is None:
        raise bad_request(f"{param}: local image files are not allowed (the server was started without "
                          "--allowed-local-media-path)", "local_images_not_allowed", param)
    if url.lower().startswith("file:"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request(f"{param}: file URLs must name a file on this host", "invalid_image_url", param)
        name = url2pathname(parsed.path)
    else:
        name = url
    root = root.resolve()
    try:
        path = (root / name).resolve()  # follows symlinks and `..`, so the check below sees the real place
        inside = path.is_relative_to(root)
        is_file = inside and path.is_file()
    except (OSError, ValueError, RuntimeError):  # embedded NUL, symlink loop, name too long
        raise bad_request(f"{param}: not a usable file path", "invalid_image_url", param) from None
    if not inside:
        raise bad_request(f"{param}: {url!r} is outside the allowed local media folder", "image_path_not_allowed",
                          param)
    if not is_file:
        raise bad_request(f"{param}: {url!r}: no such file", "image_not_found", param)
    try:
        with open(path, "rb") as file:
            data = file.read(config.max_image_bytes + 1)
    except OSError as err:
        raise bad_request(f"{param}: cannot read {url!r}: {err.strerror}", "invalid_image", param) from None
    if len(data) > config.max_image_bytes:
        raise too_large(f"{param}: the file is over the limit of {config.max_image_bytes} bytes", param)
    return data


def _read_remote(url: str, config: ServeConfig, param: str) -> bytes:
    if not config.allow_remote_images:
        raise bad_request(f"{param}: remote image URLs are not allowed (the server was started without "
                          "--allow-remote-images)", "remote_images_not_allowed", param)
    limit, timeout = config.max_image_bytes, config.remote_timeout_s
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=3) as client, \
                client.stream("GET", url) as response:
            if response.status_code != 200:
                raise bad_request(f"{param}: fetching {url} gave HTTP {response.status_code}", "image_fetch_failed",
                                  param)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise too_large(f"{param}: {url} is {declared} bytes, over the limit of {limit}", param)
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > limit:
                    raise too_large(f"{param}: {url} is over the limit of {limit} bytes", param)
                if time.monotonic() > deadline:  # a server that trickles bytes still ends at the deadline
                    raise httpx.ReadTimeout("total time limit")
    except httpx.TimeoutException:
        raise bad_request(f"{param}: fetching {url} took longer than {timeout:g} s", "image_fetch_timeout",
                          param) from None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as err:
        raise bad_request(f"{param}: cannot fetch {url}: {err}", "image_fetch_failed", param) from None
    return bytes(data)
