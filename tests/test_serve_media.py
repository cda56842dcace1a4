"""Image URLs and OpenAI messages -> what the model gets: limits, local-path confinement, remote fetches."""

from __future__ import annotations

import base64
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from minillava.data.conversation import Turn
from minillava.serve.config import ServeConfig
from minillava.serve.convert import batch_key, to_conversation, to_generation_config
from minillava.serve.errors import APIError
from minillava.serve.media import read_image_url
from minillava.serve.schemas import ChatCompletionRequest, Message


def png_bytes(size=(8, 6), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


PNG = png_bytes()


def refused(url: str, config: ServeConfig, status: int, code: str) -> APIError:
    with pytest.raises(APIError) as caught:
        read_image_url(url, config, "messages.0.content.0.image_url.url")
    assert (caught.value.status, caught.value.code) == (status, code), caught.value.message
    assert caught.value.message.startswith("messages.0.content.0.image_url.url: ")
    return caught.value


def test_data_urls():
    config = ServeConfig(max_image_bytes=len(PNG))
    encoded = base64.b64encode(PNG).decode()
    assert read_image_url(f"data:image/png;base64,{encoded}", config, "p") == PNG
    wrapped = "\n".join(encoded[i:i + 20] for i in range(0, len(encoded), 20))
    assert read_image_url(f"data:;base64,{wrapped}", config, "p") == PNG  # no type given, line-wrapped
    refused(f"data:image/png;base64,{encoded}A", config, 400, "invalid_image_url")  # bad padding
    refused(f"data:image/png;base64,{base64.b64encode(PNG + b'xxxx').decode()}", config, 413, "image_too_large")
    refused(f"data:image/png;base64,{base64.b64encode(b'x' * 10_000).decode()}", config, 413, "image_too_large")


def test_pixel_limit_is_checked_from_the_header():
    big = png_bytes((300, 200))
    config = ServeConfig(max_image_pixels=300 * 200 - 1)
    error = refused(f"data:image/png;base64,{base64.b64encode(big).decode()}", config, 413, "image_too_large")
    assert "300 x 200" in error.message
    truncated = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    refused(f"data:image/png;base64,{truncated}", ServeConfig(), 400, "invalid_image")


def test_local_paths_stay_in_the_allowed_folder(tmp_path):
    allowed = tmp_path / "media"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "a.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")
    (allowed / "dirlink").symlink_to(tmp_path)
    config = ServeConfig(allowed_local_media_path=allowed)
    for url in ("sub/a.png", str(allowed / "sub" / "a.png"), f"file://{allowed}/sub/a.png",
                f"file://localhost{allowed}/sub/a.png", "sub/../sub/a.png", f"file://{allowed}/sub/%61.png"):
        assert read_image_url(url, config, "p") == PNG, url
    for url in ("../secret.png", "sub/../../secret.png", str(tmp_path / "secret.png"), "link.png",
                "dirlink/secret.png", f"file://{tmp_path}/secret.png", "/etc/hostname"):
        error = refused(url, config, 400, "image_path_not_allowed")
        assert str(tmp_path) not in error.message.replace(url, "")  # the resolved place is not revealed
    refused("sub", config, 400, "image_not_found")  # a folder
    refused("nothing.png", config, 400, "image_not_found")
    refused("a\x00b.png", config, 400, "invalid_image_url")
    refused("file://otherhost/x.png", config, 400, "invalid_image_url")
    refused("sub/a.png", ServeConfig(), 400, "local_images_not_allowed")
    refused("sub/a.png", ServeConfig(allowed_local_media_path=allowed, max_image_bytes=10), 413, "image_too_large")


class ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server API)
        if self.path == "/slow.png":
            self.send_response(200)
            self.end_headers()
            for _ in range(40):  # trickles bytes: each read is quick, the whole is not
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
            return
        body = {"/a.png": PNG, "/big.png": b"x" * 5000}.get(self.path)
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/a.png")
            self.end_headers()
            return
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_remote_images(image_host):
    config = ServeConfig(allow_remote_images=True, max_image_bytes=4000, remote_timeout_s=0.5)
    assert read_image_url(f"{image_host}/a.png", config, "p") == PNG
    assert read_image_url(f"{image_host}/moved", config, "p") == PNG
    refused(f"{image_host}/big.png", config, 413, "image_too_large")
    refused(f"{image_host}/none.png", config, 400, "image_fetch_failed")
    refused(f"{image_host}/slow.png", config, 400, "image_fetch_timeout")
    refused("http://127.0.0.1:1/a.png", config, 400, "image_fetch_failed")  # nothing listens there
    refused(f"{image_host}/a.png", ServeConfig(), 400, "remote_images_not_allowed")


def messages(*items) -> list[Message]:
    return [Message.model_validate(m) for m in items]


def test_images_are_placed_where_the_parts_stand():
    read = []
    parts = [{"type": "text", "text": "First"}, {"type": "image_url", "image_url": {"url": "a"}},
             {"type": "text", "text": "then"}, {"type": "image_url", "image_url": {"url": "b"}}]
    conversation = to_conversation(messages(
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": parts},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "Which is bigger?"},
    ), lambda url, param: read.append((url, param)) or url.encode(), max_images=2)
    assert conversation.turns == [Turn("system", "Be brief."), Turn("user", "First\n<image>\nthen\n<image>"),
                                  Turn("assistant", ""), Turn("user", "Which is bigger?")]
    assert conversation.images == [b"a", b"b"]
    assert read == [("a", "messages.1.content.1.image_url.url"), ("b", "messages.1.content.3.image_url.url")]


def test_too_many_images_are_refused_before_any_is_read():
    parts = [{"type": "image_url", "image_url": {"url": "x"}}] * 3
    with pytest.raises(APIError, match="3 images") as caught:
        to_conversation(messages({"role": "user", "content": parts}), lambda *_: pytest.fail("read"), max_images=2)
    assert caught.value.code == "too_many_images"


def request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **fields)


def test_sampling_fields_and_batch_keys():
    config = to_generation_config(request(temperature=0.7, top_p=0.9, top_k=-1, stop="END", seed=3), 12)
    assert (config.max_new_tokens, config.temperature, config.top_p, config.top_k, config.stop, config.seed) == \
        (12, 0.7, 0.9, 0, ["END"], 3)
    assert to_generation_config(request(), 5, default_temperature=1.0).temperature == 1.0
    assert to_generation_config(request(temperature=1e-9), 5).temperature == 0  # greedy, not a division by ~0
    assert to_generation_config(request(stop=["", "x"]), 5).stop == ["x"]
    greedy = to_generation_config(request(temperature=0, seed=1), 5)
    assert batch_key(greedy, object()) == batch_key(to_generation_config(request(temperature=0, seed=2), 9), object())
    sampled = to_generation_config(request(temperature=0.7), 5)
    assert batch_key(sampled, object()) == batch_key(to_generation_config(request(temperature=0.7), 7), object())
    assert batch_key(sampled, object()) != batch_key(to_generation_config(request(temperature=0.8), 5), object())
    seeded = to_generation_config(request(temperature=0.7, seed=1), 5)
    assert batch_key(seeded, object()) != batch_key(seeded, object())  # runs alone: the seed alone decides
