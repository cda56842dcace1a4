"""Conversations -> token ids and labels, built turn by turn from separately tokenized pieces.

Each turn's text is what the tokenizer's own chat template adds for it: the template is rendered for the
first k and the first k+1 turns and the difference is turn k. Only assistant replies and their end-of-turn
token are learned; everything else is IGNORE_INDEX. Every `<image>` becomes exactly as many slots as its image's
plan asks for (data/image_plan.py): each marker is one image token while turns are rendered, and is expanded last.

A conversation can also be encoded with independent turns: each question and its reply form an attention block
of their own over the shared image prefix, as if each question were asked alone (see `encode_independent`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import accumulate

from transformers import PreTrainedTokenizerBase

from minillava.data.conversation import IMAGE_PLACEHOLDER, Conversation, ImageSource, SampleError, Turn, Video
from minillava.data.image_plan import ImagePlan, ImagePlanner, SingleViewPlanner
from minillava.data.images import ImageError
from minillava.data.video import VideoPlanner

IGNORE_INDEX = -100
SHARED_BLOCK = 0  # block id of the tokens every block sees (the template's opening and the image slots)
_LEADING_IMAGES = re.compile(rf"^(\s*{re.escape(IMAGE_PLACEHOLDER)})+\s*")


class TemplateError(ValueError):
    """The chat template cannot be split into turns (a later render does not extend an earlier one)."""


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    images: list[ImageSource]  # the images whose slots are in input_ids, in order
    # Attention blocks, one id per token: SHARED_BLOCK for the prefix all see, k >= 1 for the k-th independent
    # turn, which sees the prefix and itself. None: one causal sequence.
    blocks: list[int] | None = None
    image_plans: list[ImagePlan] = field(default_factory=list)  # one per image: its views and slot count

    @property
    def num_labels(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    @property
    def length(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodedPair:
    """A preference pair as two sequences with the same prompt; only each side's last reply is labelled."""

    chosen: EncodedSample
    rejected: EncodedSample

    @property
    def images(self) -> list[ImageSource]:
        return self.chosen.images

    @property
    def image_plans(self) -> list[ImagePlan]:
        return self.chosen.image_plans

    @property
    def length(self) -> int:
        return max(self.chosen.length, self.rejected.length)


class ConversationEncoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_token_id: int, planner: ImagePlanner | int,
                 max_length: int | None = None, video_planner: VideoPlanner | None = None):
        """`planner` decides each image's slot count; a number is a fixed-size model's count for every image.
        `video_planner` plans the videos; None: videos are refused."""
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.planner = SingleViewPlanner(planner) if isinstance(planner, int) else planner
        self.video_planner = video_planner
        self.max_length = max_length
        self.special_ids = set(tokenizer.all_special_ids) - {image_token_id}
        self.end_of_turn_id = self._find_end_of_turn()

    # -- pieces -------------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Text with `<image>` markers -> ids, one image token per marker (`_expand_images` gives it its slots)."""
        ids: list[int] = []
        for i, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i:
                ids.append(self.image_token_id)
            if part:
                ids += self.tokenizer.encode(part, add_special_tokens=False)
        return ids

    def render(self, turns: list[Turn], add_generation_prompt: bool = False) -> str:
        if not turns:
            return ""
        messages = [{"role": t.role, "content": t.content} for t in turns]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _extend(self, prefix: str, rendered: str, what: str) -> str:
        if not rendered.startswith(prefix):
            raise TemplateError(
                f"the chat template renders {what} so that it does not extend the earlier turns; "
                "turn-by-turn labels need a template whose renders only append (see README, chat templates)"
            )
        return rendered[len(prefix):]

    def _reply_label_count(self, reply_ids: list[int]) -> int:
        """Learn the reply through its first special token (end of turn); the whitespace after stays masked."""
        for i, token in enumerate(reply_ids):
            if token in self.special_ids:
                return i + 1
        return len(reply_ids)

    def _find_end_of_turn(self) -> int | None:
        turns = [Turn("user", "x"), Turn("assistant", "y")]
        prompt = self.render(turns[:1], add_generation_prompt=True)
        reply = self.tokenize(self._extend(prompt, self.render(turns), "a reply"))
        count = self._reply_label_count(reply)
        if count and reply[count - 1] in self.special_ids:
            return reply[count - 1]
        return self.tokenizer.eos_token_id

    # -- whole conversations ------------------------------------------------------------------------------
    def encode(self, conversation: Conversation, add_generation_prompt: bool = False,
               independent_turns: bool = False) -> EncodedSample:
        if independent_turns and not add_generation_prompt:
            return self.encode_independent(conversation)
        plans = self.plan_images(conversation)
        if conversation.template == "plain":
            ids, labels = self._encode_plain(conversation, add_generation_prompt)
        else:
            ids, labels = self._encode_chat(conversation.turns, add_generation_prompt)
        ids, labels = self._expand_images(ids, labels, plans, conversation)
        sample = EncodedSample(ids, labels, list(conversation.images), image_plans=plans)
        return sample if add_generation_prompt else self._truncate(sample, conversation.id)

    def encode_independent(self, conversation: Conversation) -> EncodedSample:
        """Each (user, assistant) exchange as its own attention block over the shared image prefix.

        Exchange k is encoded exactly as the one-question conversation [system turns, user: images + question k,
        assistant: reply k]; those encodings share their tokens through the last image slot, which are kept once
        (block 0), and each exchange's remaining tokens follow as block k. With a block mask and positions that
        restart after the prefix (collate), every reply is learned as if its question were asked alone: no earlier
        answer can give it away, and the image's tokens are paid for once per image instead of once per question.
        """
        where = conversation.id
        turns = list(conversation.turns)
        system = []
        while turns and turns[0].role == "system":
            system.append(turns.pop(0))
        if not turns or len(turns) % 2 or any(
                t.role != ("user" if i % 2 == 0 else "assistant") for i, t in enumerate(turns)):
            raise SampleError("independent turns need alternating user and assistant turns after any system turn",
                              sample_id=where)
        lead = _LEADING_IMAGES.match(turns[0].content)
        if conversation.images and (lead is None or IMAGE_PLACEHOLDER in turns[0].content[lead.end():]
                                    or any(IMAGE_PLACEHOLDER in t.content for t in turns[1:])):
            raise SampleError(f"independent turns need every {IMAGE_PLACEHOLDER} at the start of the first user "
                              "turn (they are the prefix each question sees)", sample_id=where)
        images = lead.group(0) if conversation.images else ""
        questions = [turns[0].content[len(images):]] + [t.content for t in turns[2::2]]
        plans = self.plan_images(conversation)
        encoded = [self._expand_images(*self._encode_chat(system + [Turn("user", images + q), reply], False),
                                       plans, conversation)
                   for q, reply in zip(questions, turns[1::2], strict=True)]
        first_ids = encoded[0][0]
        slots = [i for i, token in enumerate(first_ids) if token == self.image_token_id]
        shared = slots[-1] + 1 if slots else 0
        ids, labels, blocks = first_ids[:shared], encoded[0][1][:shared], [SHARED_BLOCK] * shared
        for k, (block_ids, block_labels) in enumerate(encoded, start=1):
            if block_ids[:shared] != first_ids[:shared]:
                raise TemplateError(f"{where}: the chat template renders the image prefix differently per turn")
            if self.max_length is not None and len(ids) + len(block_ids) - shared > self.max_length:
                break  # whole blocks only: a cut block would teach half an answer
            ids += block_ids[shared:]
            labels += block_labels[shared:]
            blocks += [k] * (len(block_ids) - shared)
        sample = EncodedSample(ids, labels, list(conversation.images), blocks, plans)
        if sample.num_labels == 0:
            raise SampleError(f"no turn fits in max_length {self.max_length} tokens after the image prefix",
                              sample_id=where)
        return sample

    def encode_preference(self, conversation: Conversation) -> EncodedPair:
        """The prompt followed by the chosen reply (the last turn) and, as a second sequence, by the rejected one
        (`conversation.rejected`). Only the final reply of each is labelled, earlier assistant turns are prompt:
        a preference objective compares the log-probabilities of the two replies and nothing else."""
        where = conversation.id
        if conversation.rejected is None or not conversation.turns or conversation.turns[-1].role != "assistant":
            raise SampleError("not a preference pair: a preference objective needs 'chosen' and 'rejected' replies "
                              "(data format 'preference')", sample_id=where)
        if conversation.template != "chat":
            raise SampleError("preference pairs are encoded with the chat template only", sample_id=where)
        prompt = conversation.turns[:-1]
        plans = self.plan_images(conversation)
        prompt_ids, _ = self._expand_images(*self._encode_chat(prompt, add_generation_prompt=True), plans,
                                            conversation)
        sides = []
        for reply in (conversation.turns[-1].content, conversation.rejected):
            ids, labels = self._expand_images(*self._encode_chat([*prompt, Turn("assistant", reply)], False), plans,
                                              conversation)
            if ids[: len(prompt_ids)] != prompt_ids:
                raise TemplateError(f"{where}: the chat template renders the prompt differently before a reply")
            labels = [IGNORE_INDEX] * len(prompt_ids) + labels[len(prompt_ids):]
            if self.max_length is not None and len(ids) > self.max_length:
                raise SampleError(f"the prompt and a reply take {len(ids)} tokens, more than max_length "
                                  f"{self.max_length} (a cut reply cannot be compared)", sample_id=where)
            sides.append(EncodedSample(ids, labels, list(conversation.images), image_plans=plans))
        return EncodedPair(*sides)

    def plan_images(self, conversation: Conversation) -> list[ImagePlan]:
        """Each image's and video's plan, from headers only; a source that cannot be planned is the sample's error."""
        plans = []
        for number, source in enumerate(conversation.images, start=1):
            try:
                plans.append(self.plan_image(source))
            except ImageError as err:
                raise SampleError(f"image {number} of {len(conversation.images)}: {err}",
                                  sample_id=conversation.id) from None
        return plans

    def plan_image(self, source: ImageSource) -> ImagePlan:
        if not isinstance(source, Video):
            return self.planner.plan(source)
        if self.video_planner is None:
            raise ImageError(f"{source.name}: this model takes no video")
        return self.video_planner.plan(source)

    def _expand_images(self, ids: list[int], labels: list[int], plans: list[ImagePlan],
                       conversation: Conversation) -> tuple[list[int], list[int]]:
        """Each image token (one per marker, in order) -> its image's slots; one marker per image, or an error."""
        marks = [i for i, token in enumerate(ids) if token == self.image_token_id]
        if len(marks) != len(plans):
            raise SampleError(f"{conversation.num_placeholders} {IMAGE_PLACEHOLDER} placeholders but "
                              f"{len(conversation.images)} images", sample_id=conversation.id)
        out_ids: list[int] = []
        out_labels: list[int] = []
        start = 0
        for at, plan in zip(marks, plans, strict=True):
            out_ids += ids[start:at] + [self.image_token_id] * plan.tokens
            out_labels += labels[start:at] + [labels[at]] * plan.tokens
            start = at + 1
        return out_ids + ids[start:], out_labels + labels[start:]

    def _encode_chat(self, turns: list[Turn], add_generation_prompt: bool) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        for k, turn in enumerate(turns):
            if turn.role == "assistant":
                with_header = self.render(turns[:k], add_generation_prompt=True)
                header = self.tokenize(self._extend(done, with_header, f"turn {k}'s header"))
                rendered = self.render(turns[: k + 1])
                reply = self.tokenize(self._extend(with_header, rendered, f"turn {k}"))
                learned = self._reply_label_count(reply)
                ids += header + reply
                labels += [IGNORE_INDEX] * len(header) + reply[:learned] + [IGNORE_INDEX] * (len(reply) - learned)
            else:
                rendered = self.render(turns[: k + 1])
                piece = self.tokenize(self._extend(done, rendered, f"turn {k}"))
                ids += piece
                labels += [IGNORE_INDEX] * len(piece)
            done = rendered
        if add_generation_prompt:
            piece = self.tokenize(self._extend(done, self.render(turns, add_generation_prompt=True), "the prompt"))
            ids += piece
            labels += [IGNORE_INDEX] * len(piece)
        return ids, labels

    def _encode_plain(self, conversation: Conversation, add_generation_prompt: bool = False
                      ) -> tuple[list[int], list[int]]:
        """LLaVA-Pretrain: the images (one image token each, expanded later), then the caption and eos, which
        are learned.

        As a generation prompt it is the image slots alone: the model writes the caption.
        """
        replies = [t.content for t in conversation.turns if t.role == "assistant"]
        slots = [self.image_token_id] * len(conversation.images)
        if add_generation_prompt:
            return slots, [IGNORE_INDEX] * len(slots)
        caption = self.tokenizer.encode(" ".join(replies).strip(), add_special_tokens=False)
        caption.append(self.tokenizer.eos_token_id)
        return slots + caption, [IGNORE_INDEX] * len(slots) + caption

    def _truncate(self, sample: EncodedSample, sample_id: str) -> EncodedSample:
        if self.max_length is None or len(sample.input_ids) <= self.max_length:
            return sample
        cut = self.max_length
        ids = sample.input_ids
        # Never cut inside an image's slots: step back to where that image starts.
        while cut > 0 and ids[cut - 1] == self.image_token_id and ids[cut] == self.image_token_id:
            cut -= 1
        kept_slots = sum(1 for token in ids[:cut] if token == self.image_token_id)
        kept_images = sum(1 for slots in accumulate(p.tokens for p in sample.image_plans) if slots <= kept_slots)
        truncated = EncodedSample(ids[:cut], sample.labels[:cut], sample.images[:kept_images],
                                  image_plans=sample.image_plans[:kept_images])
        if truncated.num_labels == 0:
            raise SampleError(f"no assistant reply left after truncation to {self.max_length} tokens "
                              "(raise max_length or shorten the sample)", sample_id=sample_id)
        return truncated
