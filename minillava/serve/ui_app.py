"""The web UI (a Streamlit script, started by `minillava ui`): drop images or a video, ask, watch the reply stream."""

from __future__ import annotations

import argparse
import base64
import os
import sys

import streamlit as st

from minillava.serve.backends import BackendError, LocalChat, RemoteChat, Settings

IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "gif", "bmp"]
VIDEO_TYPES = ["mp4", "webm", "mov", "mkv", "avi", "m4v"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="minillava ui")
    parser.add_argument("--server", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32")
    return parser.parse_known_args(sys.argv[1:])[0]


@st.cache_resource(show_spinner="Loading the model ...")
def local_backend(folder: str, dtype: str) -> LocalChat:
    return LocalChat.from_folder(folder, dtype)


def sidebar(args: argparse.Namespace) -> tuple[LocalChat | RemoteChat, Settings, str]:
    with st.sidebar:
        st.header("minillava")
        if args.model:
            st.caption(f"Model in this process: `{args.model}`")
            backend = local_backend(args.model, args.dtype)
        else:
            url = st.text_input("Server URL", args.server, help="an OpenAI-compatible base URL")
            key = st.text_input("API key", os.environ.get("MINILLAVA_UI_API_KEY", ""), type="password")
            backend = RemoteChat(url, key or None)
        st.subheader("Generation")
        settings = Settings(
            max_tokens=st.slider("Max new tokens", 1, 1024, 128),
            temperature=st.slider("Temperature", 0.0, 2.0, 0.0, 0.05, help="0 = greedy"),
            top_p=st.slider("Top p", 0.05, 1.0, 1.0, 0.05),
        )
        system = st.text_area("System message", "", height=80)
        if st.button("New chat", icon=":material/refresh:"):
            st.session_state.history = []
            st.session_state.uploads += 1  # a fresh uploader: the old files are not sent again
            st.rerun()
    return backend, settings, system


def media_part(data: bytes, mime: str) -> dict:
    """An image_url part, or a video_url part for a video/* file, inline as a data URL."""
    kind = "video_url" if mime.startswith("video/") else "image_url"
    return {"type": kind, kind: {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


def to_messages(history: list[dict], system: str) -> list[dict]:
    """The chat so far in the OpenAI format, a turn's images and videos first, inline as data URLs."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for turn in history:
        if turn.get("media"):
            content = [media_part(data, mime) for data, mime in turn["media"]]
            messages.append({"role": turn["role"], "content": [*content, {"type": "text", "text": turn["text"]}]})
        else:
            messages.append({"role": turn["role"], "content": turn["text"]})
    return messages


def show_media(media: list[tuple[bytes, str]], width: int) -> None:
    images = [data for data, mime in media if not mime.startswith("video/")]
    if images:
        st.image(images, width=width)
    for data, mime in media:
        if mime.startswith("video/"):
            st.video(data, format=mime)


def show(turn: dict) -> None:
    with st.chat_message(turn["role"]):
        show_media(turn.get("media") or [], 200)
        st.markdown(turn["text"])
        if turn.get("caption"):
            st.caption(turn["caption"])


def main() -> None:
    st.set_page_config(page_title="minillava", page_icon=":material/visibility:")
    state = st.session_state
    state.setdefault("history", [])
    state.setdefault("sent", set())
    state.setdefault("uploads", 0)
    backend, settings, system = sidebar(parse_args())
    st.title("minillava")
    uploads = st.file_uploader("Images or a video", type=IMAGE_TYPES + VIDEO_TYPES, accept_multiple_files=True,
                               key=f"upload-{state.uploads}",
                               help="drop images (several are asked about together) or a video here; they go with "
                                    "your next message")
    fresh = [upload for upload in uploads or [] if upload.file_id not in state.sent]
    preview = st.empty()
    if fresh:
        with preview.container():
            st.caption("goes with your next message")
            show_media([(upload.getvalue(), upload.type) for upload in fresh], 160)
    for turn in state.history:
        show(turn)
    prompt = st.chat_input("Ask about the images")
    if not prompt:
        return
    user = {"role": "user", "text": prompt, "media": [(upload.getvalue(), upload.type) for upload in fresh]}
    state.history.append(user)
    preview.empty()  # the files now show in the message they went with
    show(user)
    with st.chat_message("assistant"):
        try:
            reply = backend.stream(to_messages(state.history, system), settings)
            st.write_stream(reply)
        except BackendError as err:
            state.history.pop()  # the question can be sent again
            st.error(str(err))
            return
        caption = reply.summary()
        st.caption(caption)
    state.sent.update(upload.file_id for upload in fresh)
    state.history.append({"role": "assistant", "text": reply.text, "caption": caption})


main()
