"""A multi-turn chat with a local model: attach images, ask, stream the replies (`minillava chat`)."""

from __future__ import annotations

from collections.abc import Iterator

from minillava.data.conversation import IMAGE_PLACEHOLDER, Conversation, ImageSource, Turn, Video
from minillava.data.images import load_image
from minillava.model.generation import Generation
from minillava.model.sampling import GenerationConfig
from minillava.serve.prepare import context_length


class ChatSession:
    """The conversation so far; images attached with `attach` go with the next message."""

    def __init__(self, model, config: GenerationConfig | None = None, system: str | None = None):
        self.model = model
        self.config = config or GenerationConfig()
        self.system = system
        self.max_len = context_length(model)
        self.last: Generation | None = None
        self.reset()

    def reset(self) -> None:
        self.turns: list[Turn] = [Turn("system", self.system)] if self.system else []
        self.images: list[ImageSource] = []
        self.pending: list[ImageSource] = []

    def attach(self, image: ImageSource) -> None:
        """Load the image now (a video: read its header), so that a bad path fails here and not in the middle of a
        reply."""
        if isinstance(image, Video):
            self.model.encoder.plan_image(image)
            self.pending.append(image)
        else:
            self.pending.append(load_image(image))

    def stream(self, text: str) -> Iterator[str]:
        """The reply's text as it is generated; the exchange joins the history once the reply is complete."""
        if IMAGE_PLACEHOLDER in text:
            raise ValueError(f"the message holds {IMAGE_PLACEHOLDER!r}; attach images instead")
        content = "".join(f"{IMAGE_PLACEHOLDER}\n" for _ in self.pending) + text
        turns = [*self.turns, Turn("user", content)]
        conversation = Conversation(turns=turns, images=self.images + self.pending)
        prompt = len(self.model.encoder.encode(conversation, add_generation_prompt=True).input_ids)
        if prompt + self.config.max_new_tokens > self.max_len:
            raise ValueError(f"the conversation is {prompt} tokens and the reply may take "
                             f"{self.config.max_new_tokens}, over the model's {self.max_len}: reset to start over")
        run = self.model.stream([conversation], self.config)
        for deltas in run:
            if deltas[0]:
                yield deltas[0]
        self.last = run.results[0]
        self.turns = [*turns, Turn("assistant", self.last.text)]
        self.images += self.pending
        self.pending = []
