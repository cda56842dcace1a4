"""OpenAI messages and sampling fields -> a minillava Conversation and GenerationConfig."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from minillava.data.conversation import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Conversation, ImageSource, Turn
from minillava.model.sampling import GenerationConfig
from minillava.serve.errors import bad_request
from minillava.serve.schemas import ChatCompletionRequest, ImagePart, Message, VideoPart

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy (dividing logits by ~0 would overflow)

MediaReader = Callable[[str, str], ImageSource]  # (url, param) -> an image, or a Video


def count_parts(messages: Sequence[Message], kind: type) -> int:
    return sum(isinstance(part, kind) for m in messages if isinstance(m.content, list) for part in m.content)


def to_conversation(messages: Sequence[Message], read_image: MediaReader, max_images: int,
                    read_video: MediaReader | None = None, max_videos: int = 0) -> Conversation:
    """Each image or video part becomes an `<image>` marker where it stands; text parts are joined by newlines."""
    for kind, noun, limit in ((ImagePart, "image", max_images), (VideoPart, "video", max_videos)):
        count = count_parts(messages, kind)
        if count > limit:
            raise bad_request(f"{count} {noun}s in the request; this server allows at most {limit} per prompt",
                              f"too_many_{noun}s", "messages")
    turns: list[Turn] = []
    images: list[ImageSource] = []
    for i, message in enumerate(messages):
        role = ROLES[message.role]
        where = f"messages.{i}.content"
        if message.content is None:
            if role != "assistant":
                raise bad_request(f"{where}: a {message.role} message needs content", "invalid_value", where)
            text = ""
        elif isinstance(message.content, str):
            text = _checked_text(message.content, where)
        else:
            pieces = []
            for j, part in enumerate(message.content):
                if isinstance(part, ImagePart | VideoPart):
                    if role != "user":
                        raise bad_request(f"{where}.{j}: images and videos are only allowed in user messages",
                                          "invalid_value", f"{where}.{j}")
                    if isinstance(part, ImagePart):
                        images.append(read_image(part.image_url.url, f"{where}.{j}.image_url.url"))
                    else:
                        images.append(read_video(part.video_url.url, f"{where}.{j}.video_url.url"))
                    pieces.append(IMAGE_PLACEHOLDER)
                else:
                    pieces.append(_checked_text(part.text, f"{where}.{j}.text"))
            text = "\n".join(pieces)
        turns.append(Turn(role, text))
    return Conversation(turns=turns, images=images)


def _checked_text(text: str, where: str) -> str:
    for marker in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
        if marker in text:
            raise bad_request(f"{where}: the text holds {marker!r}; send images and videos as image_url and "
                              "video_url parts, the server places them", "invalid_value", where)
    return text


def to_generation_config(request: ChatCompletionRequest, max_new_tokens: int,
                         default_temperature: float = 1.0) -> GenerationConfig:
    """The request's sampling fields; unsupported ones are refused rather than silently ignored."""
    if request.n != 1:
        raise bad_request("only n=1 is supported", "invalid_value", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise bad_request(f"{name} is not supported (use repetition_penalty)", "invalid_value", name)
    if request.logprobs:
        raise bad_request("logprobs are not supported", "invalid_value", "logprobs")
    temperature = default_temperature if request.temperature is None else request.temperature
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=0.0 if temperature < MIN_TEMPERATURE else temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=max(0, request.top_k or 0),
        repetition_penalty=request.repetition_penalty or 1.0,
        stop=[s for s in stop if s],
        seed=request.seed,
    )


def batch_key(config: GenerationConfig, unique: object) -> Hashable:
    """Requests with equal keys can share a batch: everything that applies to the whole batch but the length.

    A seeded sampling request runs alone, so that its seed gives the same reply whatever else is waiting.
    """
    stop = tuple(config.stop)
    if config.temperature == 0:
        return ("greedy", config.repetition_penalty, stop)
    if config.seed is not None:
        return ("seeded", unique)
    return ("sample", config.temperature, config.top_p, config.top_k, config.repetition_penalty, stop)
