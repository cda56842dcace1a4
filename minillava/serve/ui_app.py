"""The web UI (a Streamlit script, started by `minillava ui`): drop an image, ask, watch the reply stream."""

from __future__ import annotations

import argparse
import base64
import os
import sys

import streamlit as st

from minillava.serve.backends import BackendError, LocalChat, RemoteChat, Settings

IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "gif", "bmp"]


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
            st.session_state.uploads += 1  # a fresh uploader: the old image is not sent again
            st.rerun()
    return backend, settings, system


def to_messages(history: list[dict], system: str) -> list[dict]:
    """The chat so far in the OpenAI format, images inline as data URLs."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for turn in history:
        if turn.get("image"):
            data, mime = turn["image"]
            url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
            content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": turn["text"]}]
            messages.append({"role": turn["role"], "content": content})
        else:
            messages.append({"role": turn["role"], "content": turn["text"]})
    return messages


def show(turn: dict) -> None:
    with st.chat_message(turn["role"]):
        if turn.get("image"):
            st.image(turn["image"][0], width=200)
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
    upload = st.file_uploader("Image", type=IMAGE_TYPES, key=f"upload-{state.uploads}",
                              help="drop an image here; it goes with your next message")
    fresh = upload is not None and upload.file_id not in state.sent
    preview = st.empty()
    if fresh:
        preview.image(upload.getvalue(), width=240, caption="goes with your next message")
    for turn in state.history:
        show(turn)
    prompt = st.chat_input("Ask about the image")
    if not prompt:
        return
    user = {"role": "user", "text": prompt, "image": (upload.getvalue(), upload.type) if fresh else None}
    state.history.append(user)
    preview.empty()  # the image now shows in the message it went with
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
    if fresh:
        state.sent.add(upload.file_id)
    state.history.append({"role": "assistant", "text": reply.text, "caption": caption})


main()
