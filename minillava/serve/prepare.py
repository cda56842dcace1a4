"""A validated chat completion request -> a Job the model worker can run (runs on a request thread)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import jinja2
import torch

from minillava.data.conversation import SampleError, Video
from minillava.data.image_plan import ImagePlan
from minillava.data.images import ImageError
from minillava.data.tokenize import TemplateError
from minillava.data.video import TooManyFrames
from minillava.serve.batcher import Event, Job
from minillava.serve.config import ServeConfig
from minillava.serve.convert import batch_key, to_conversation, to_generation_config
from minillava.serve.errors import bad_request
from minillava.serve.media import read_image_url, read_video_url
from minillava.serve.schemas import ChatCompletionRequest


def context_length(model) -> int:
    """Prompt plus reply tokens the language model can attend to."""
    lm_config = model.language_model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(lm_config, name, None)
        if value:
            return int(value)
    return int(model.config.max_length)


class JobBuilder:
    def __init__(self, model, config: ServeConfig):
        self.model = model
        self.config = config
        self.max_model_len = config.max_model_len or context_length(model)
        self._tokenizer_lock = threading.Lock()  # one tokenizer object shared by the request threads

    def build(self, request: ChatCompletionRequest, deliver: Callable[[Event], None]) -> Job:
        # Sampling fields first: a refused setting should not cost an image download.
        generation = to_generation_config(request, 1, self.config.default_temperature)
        params: list[str] = []

        def read(url: str, param: str) -> bytes:
            params.append(param)
            return read_image_url(url, self.config, param)

        video_io = request.media_io_kwargs.video if request.media_io_kwargs else None
        frames = video_io.num_frames if video_io else None

        def read_video(url: str, param: str) -> Video:
            params.append(param)
            return Video(read_video_url(url, self.config, param), frames)

        conversation = to_conversation(request.messages, read, self.config.max_images_per_prompt, read_video,
                                       self.config.max_videos_per_prompt)
        self._check_plans(conversation.images, params)
        with self._tokenizer_lock:
            try:
                sample = self.model.encoder.encode(conversation, add_generation_prompt=True)
            except (SampleError, TemplateError, jinja2.TemplateError) as err:
                raise bad_request(f"the messages cannot be rendered with the model's chat template: {err}",
                                  "invalid_messages", "messages") from None
        max_new_tokens = self._max_new_tokens(request, len(sample.input_ids))
        pixels = self._pixel_values(sample.images, sample.image_plans, params)
        generation = replace(generation, max_new_tokens=max_new_tokens)
        return Job(sample.input_ids, pixels, generation, batch_key(generation, object()), deliver,
                   image_plans=sample.image_plans)

    def _check_plans(self, images: list, params: list[str]) -> None:
        """Each image's and video's plan, read from its header: a video that does not open or asks for more frames
        than the model takes is the client's error, named by its part."""
        for image, param in zip(images, params, strict=True):
            try:
                self.model.encoder.plan_image(image)
            except ImageError as err:
                kind = "video" if isinstance(image, Video) else "image"
                where = "media_io_kwargs.video.num_frames" if isinstance(err, TooManyFrames) else param
                raise bad_request(f"{param}: {err}", f"invalid_{kind}", where) from None

    def _max_new_tokens(self, request: ChatCompletionRequest, prompt_tokens: int) -> int:
        room = self.max_model_len - prompt_tokens
        if room < 1:
            raise bad_request(f"the prompt is {prompt_tokens} tokens (images included), and this model's context "
                              f"is {self.max_model_len} tokens", "context_length_exceeded", "messages")
        asked = request.max_completion_tokens or request.max_tokens
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        if asked is not None and asked > room:
            raise bad_request(f"{param} is {asked}, but the prompt is {prompt_tokens} tokens and this model's "
                              f"context is {self.max_model_len}: at most {room} tokens are left",
                              "context_length_exceeded", param)
        return asked or min(self.config.default_max_tokens, room)

    def _pixel_values(self, images: list, plans: list[ImagePlan], params: list[str]) -> torch.Tensor | None:
        if not images:
            return None
        tensors = []
        for image, plan, param in zip(images, plans, params, strict=True):
            try:
                tensors.append(self.model.pixel_values([image], [plan]))
            except ImageError as err:
                kind = "video" if isinstance(image, Video) else "image"
                raise bad_request(f"{param}: {err}", f"invalid_{kind}", param) from None
        return torch.cat(tensors)
