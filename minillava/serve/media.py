"""Image and video URLs of a request -> encoded bytes, within the server's limits.

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


def too_large(message: str, param: str, kind: str = "image") -> APIError:
    return APIError(413, message, f"{kind}_too_large", param)


def read_image_url(url: str, config: ServeConfig, param: str) -> bytes:
    """The encoded image an image_url part points to; `param` names the part in error messages."""
    data = _read_url(url, config, param, "image", config.max_image_bytes)
    check_image_size(data, config.max_image_pixels, param)
    return data


def read_video_url(url: str, config: ServeConfig, param: str) -> bytes:
    """The encoded video a video_url part points to (its frames are checked when the request is planned)."""
    return _read_url(url, config, param, "video", config.max_video_bytes)


def _read_url(url: str, config: ServeConfig, param: str, kind: str, limit: int) -> bytes:
    scheme = urlparse(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
    if scheme == "data":
        return _read_data_url(url, limit, param, kind)
    if scheme in ("http", "https"):
        return _read_remote(url, config, param, kind, limit)
    if scheme in ("file", ""):
        return _read_local(url, config, param, kind, limit)
    raise bad_request(f"{param}: unsupported {kind} URL scheme {scheme!r} (use data:, http(s): or file:)",
                      f"invalid_{kind}_url", param)


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


def _read_data_url(url: str, limit: int, param: str, kind: str) -> bytes:
    header, comma, payload = url.partition(",")
    example = "data:image/png;base64,<data>" if kind == "image" else "data:video/mp4;base64,<data>"
    if not comma or not header.endswith(";base64"):
        raise bad_request(f"{param}: a data URL must look like {example}", f"invalid_{kind}_url", param)
    mime = header[len("data:"):-len(";base64")]
    if mime and not mime.lower().startswith(f"{kind}/"):
        raise bad_request(f"{param}: the data URL holds {mime!r}, not {'an' if kind == 'image' else 'a'} {kind}",
                          f"invalid_{kind}_url", param)
    payload = "".join(payload.split())  # some encoders wrap lines
    if len(payload) // 4 * 3 > limit + 2:  # refuse before decoding
        raise too_large(f"{param}: the {kind} is over the limit of {limit} bytes", param, kind)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param}: the data URL is not valid base64", f"invalid_{kind}_url", param) from None
    if len(data) > limit:
        raise too_large(f"{param}: the {kind} is {len(data)} bytes, over the limit of {limit}", param, kind)
    return data


def _read_local(url: str, config: ServeConfig, param: str, kind: str, limit: int) -> bytes:
    root = config.allowed_local_media_path
    if root is None:
        raise bad_request(f"{param}: local {kind} files are not allowed (the server was started without "
                          "--allowed-local-media-path)", f"local_{kind}s_not_allowed", param)
    if url.lower().startswith("file:"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request(f"{param}: file URLs must name a file on this host", f"invalid_{kind}_url", param)
        name = url2pathname(parsed.path)
    else:
        name = url
    root = root.resolve()
    try:
        path = (root / name).resolve()  # follows symlinks and `..`, so the check below sees the real place
        inside = path.is_relative_to(root)
        is_file = inside and path.is_file()
    except (OSError, ValueError, RuntimeError):  # embedded NUL, symlink loop, name too long
        raise bad_request(f"{param}: not a usable file path", f"invalid_{kind}_url", param) from None
    if not inside:
        raise bad_request(f"{param}: {url!r} is outside the allowed local media folder", f"{kind}_path_not_allowed",
                          param)
    if not is_file:
        raise bad_request(f"{param}: {url!r}: no such file", f"{kind}_not_found", param)
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as err:
        raise bad_request(f"{param}: cannot read {url!r}: {err.strerror}", f"invalid_{kind}", param) from None
    if len(data) > limit:
        raise too_large(f"{param}: the file is over the limit of {limit} bytes", param, kind)
    return data


def _read_remote(url: str, config: ServeConfig, param: str, kind: str, limit: int) -> bytes:
    if not config.allow_remote_images:
        raise bad_request(f"{param}: remote {kind} URLs are not allowed (the server was started without "
                          "--allow-remote-images)", f"remote_{kind}s_not_allowed", param)
    timeout = config.remote_timeout_s
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=3) as client, \
                client.stream("GET", url) as response:
            if response.status_code != 200:
                raise bad_request(f"{param}: fetching {url} gave HTTP {response.status_code}", f"{kind}_fetch_failed",
                                  param)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise too_large(f"{param}: {url} is {declared} bytes, over the limit of {limit}", param, kind)
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > limit:
                    raise too_large(f"{param}: {url} is over the limit of {limit} bytes", param, kind)
                if time.monotonic() > deadline:  # a server that trickles bytes still ends at the deadline
                    raise httpx.ReadTimeout("total time limit")
    except httpx.TimeoutException:
        raise bad_request(f"{param}: fetching {url} took longer than {timeout:g} s", f"{kind}_fetch_timeout",
                          param) from None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as err:
        raise bad_request(f"{param}: cannot fetch {url}: {err}", f"{kind}_fetch_failed", param) from None
    return bytes(data)
