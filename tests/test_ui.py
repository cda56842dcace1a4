"""The web UI end to end in headless chromium (upload, ask, streamed reply), and its two backends."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from minillava.model import GenerationConfig, MiniLlava, build_prompt
from minillava.serve import BackgroundServer, ServeConfig, create_app
from minillava.serve.backends import BackendError, LocalChat, RemoteChat, Settings

KEY = "ui-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def model(tiny_towers, tiny_llms) -> MiniLlava:
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    torch.manual_seed(0)
    for weight in model.language_model.parameters():  # larger weights: replies differ by prompt and image
        torch.nn.init.normal_(weight, std=0.2)
    return model.eval()


@pytest.fixture(scope="module")
def server(model):
    with BackgroundServer(create_app(model, ServeConfig(model_name="tiny", api_key=KEY))) as running:
        yield running


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def words(text: str) -> list[str]:
    """Runs of letters and digits: what survives markdown rendering of a reply unchanged."""
    return re.findall(r"[A-Za-z0-9]+", text)


def test_remote_and_local_backends_agree_with_generate(server, model, images):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(images[0])}},
                                             {"type": "text", "text": "What is it?"}]}]
    expected = model.generate([build_prompt("What is it?", [images[0]])], GenerationConfig(max_new_tokens=6))[0]
    for backend in (RemoteChat(f"{server.url}/v1", KEY), LocalChat(model)):
        reply = backend.stream(messages, Settings(max_tokens=6))
        assert "".join(reply) == reply.text == expected.text
        assert reply.finish_reason == "length"
        assert reply.usage["prompt_tokens"] == expected.prompt_tokens and reply.usage["completion_tokens"] == 6
    with pytest.raises(BackendError, match="HTTP 401"):
        list(RemoteChat(f"{server.url}/v1", "wrong").stream(messages, Settings()))
    with pytest.raises(BackendError, match="HTTP 400: only n=1|context|max_tokens"):
        list(RemoteChat(f"{server.url}/v1", KEY).stream(messages, Settings(max_tokens=10**6)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ui(server, tmp_path):
    port = free_port()
    log = (tmp_path / "ui.log").open("w")
    env = {**os.environ, "MINILLAVA_UI_API_KEY": KEY}  # the key reaches the page from the environment
    process = subprocess.Popen([sys.executable, "-m", "minillava", "ui", "--server", f"{server.url}/v1",
                                "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the UI did not start: {(tmp_path / 'ui.log').read_text()[-2000:]}")
        time.sleep(0.1)
    yield url
    process.terminate()  # `minillava ui` stops its streamlit child on SIGTERM
    assert process.wait(30) == 128 + 15
    log.close()


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver (Debian: apt-get "
                                                             "install chromium chromium-driver)")
def test_upload_two_images_ask_and_see_the_streamed_reply(ui, model, images, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    paths = [tmp_path / "red.png", tmp_path / "other.png"]
    images[0].save(paths[0])
    images[2].save(paths[1])
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(ui)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
        upload.send_keys("\n".join(str(path) for path in paths))  # what dropping both files on the zone does
        wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")) == 2)
        box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=stChatInputTextArea]")))
        box.send_keys("What colour is it?", Keys.ENTER)

        def finished_reply(driver):
            messages = driver.find_elements(By.CSS_SELECTOR, "[data-testid=stChatMessage]")
            return messages if len(messages) == 2 and "finish:" in messages[1].text else False

        question, answer = wait.until(finished_reply)
        driver.save_screenshot(str(tmp_path / "ui.png"))
        assert "What colour is it?" in question.text
        assert len(question.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")) == 2  # both went with it
        expected = model.generate([build_prompt("What colour is it?", [images[0], images[2]])],
                                  GenerationConfig(max_new_tokens=128))[0]  # the UI's default settings
        shown = answer.find_element(By.CSS_SELECTOR, "[data-testid=stMarkdownContainer]").text
        assert words(shown)[:12] == words(expected.text)[:12]
        assert f"{expected.prompt_tokens} prompt + {len(expected.token_ids)} reply tokens" in answer.text
        assert (tmp_path / "ui.png").stat().st_size > 10_000
    finally:
        driver.quit()
