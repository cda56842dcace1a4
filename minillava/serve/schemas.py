"""The OpenAI chat completions wire format (the part minillava serves), as pydantic models."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# -- requests ---------------------------------------------------------------------------------------------


class ImageURL(BaseModel):
    url: str = Field(min_length=1, description="a data: URL, an http(s) URL, or a file:// URL / path on the server")
    detail: Literal["auto", "low", "high"] | None = None  # accepted; every image is seen at the encoder's size


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(BaseModel):
    url: str = Field(min_length=1, description="a data: URL (video/mp4, ...), an http(s) URL, or a file:// URL / "
                                               "path on the server")


class VideoPart(BaseModel):
    type: Literal["video_url"]  # vLLM's extension
    video_url: VideoURL


StopString = Annotated[str, Field(max_length=256)]
ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class VideoIO(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_frames: int | None = Field(None, ge=1, description="frames sampled from each video; default: the model's")


class MediaIO(BaseModel):
    model_config = ConfigDict(extra="forbid")

    video: VideoIO | None = None


class ChatCompletionRequest(BaseModel):
    # Fields OpenAI clients send that do not change a minillava reply (user, metadata, ...) are ignored.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=1024)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="vLLM's extension; 0 or -1 keeps every token")
    repetition_penalty: float | None = Field(None, gt=0, le=2, description="vLLM's extension")
    stop: StopString | Annotated[list[StopString], Field(max_length=8)] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = Field(1, ge=1, description="only 1 is served")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="only 0 is served")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="only 0 is served")
    logprobs: bool = Field(False, description="only false is served")
    media_io_kwargs: MediaIO | None = Field(None, description="vLLM's extension: {'video': {'num_frames': N}}")


# -- responses --------------------------------------------------------------------------------------------

FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int  # image slots count as the model sees them: each image's planned slots
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed reply."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "minillava"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "shutting down"]
    queued: int
    running: int
    completed: int
    cancelled: int
    failed: int
    batches: int
    mean_batch_size: float
