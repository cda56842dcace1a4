"""OpenAI messages and sampling fields -> a minillava Conversation and GenerationConfig."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from minillava.data.conversation import IMAGE_PLACEHOLDER, Conversation, ImageSource, Turn
from minillava.model.sampling import GenerationConfig
from minillava.serve.errors import bad_request
from minillava.serve.schemas import ChatCompletionRequest, ImagePart, Message

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy (dividing logits by ~0 would overflow)

ImageReader = Callable[[str, str], ImageSource]  # (url, param) -> image


def count_images(messages: Sequence[Message]) -> int:
    return sum(isinstance(part, ImagePart) for m in messages if isinstance(m.content, list) for part in m.content)


def to_conversation(messages: Sequence[Message], read_image: ImageReader, max_images: int) -> Conversation:
    """Each image part becomes an `<image>` marker where it stands; text parts are joined by newlines."""
    count = count_images(messages)
    if count > max_images:
        raise bad_request(f"{count} images in the request; this server allows at most {max_images} per prompt",
                          "too_many_images", "messages")
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
                if isinstance(part, ImagePart):
                    if role != "user":
                        raise bad_request(f"{where}.{j}: images are only allowed in user messages", "invalid_value",
                                          f"{where}.{j}")
                    images.append(read_image(part.image_url.url, f"{where}.{j}.image_url.url"))
                    pieces.append(IMAGE_PLACEHOLDER)
                else:
                    pieces.append(_checked_text(part.text, f"{where}.{j}.text"))
            text = "\n".join(pieces)
        turns.append(Turn(role, text))
    return Conversation(turns=turns, images=images)


def _checked_text(text: str, where: str) -> str:
    if IMAGE_PLACEHOLDER in text:
        raise bad_request(f"{where}: the text holds {IMAGE_PLACEHOLDER!r}; send images as image_url parts, the "
                          "server places them", "invalid_value", where)
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
