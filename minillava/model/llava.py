"""MiniLlava: vision encoder -> projector -> language model, with one training forward."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from minillava.data.collate import Batch, collate
from minillava.data.conversation import Conversation, ImageSource, Video
from minillava.data.image_plan import ImagePlan, ImagePlanner, SingleViewPlanner
from minillava.data.images import load_image
from minillava.data.tokenize import IGNORE_INDEX, ConversationEncoder
from minillava.data.video import VideoError, load_frames
from minillava.model.anyres import add_image_newline, anyres_planner
from minillava.model.blocks import block_attention_mask
from minillava.model.config import AnyResConfig, MiniLlavaConfig, VideoConfig
from minillava.model.cpu_linear import use_onednn_linears
from minillava.model.generation import Generation, GenerationRun, build_prompt, generate, stream
from minillava.model.image_slots import check_image_slots
from minillava.model.language import load_language_model, load_tokenizer, resolve_llm
from minillava.model.projectors import Projector, build_projector
from minillava.model.sampling import GenerationConfig
from minillava.model.templates import resolve_chat_template
from minillava.model.video import video_planner
from minillava.model.vision import VISION_ENCODERS, VisionEncoder
from minillava.model.vision.resolve import vision_config_for

WEIGHTS_NAME = "model.safetensors"
COMPONENTS = ("vision", "projector", "language_model")


@dataclass
class ForwardOutput:
    loss: torch.Tensor | None  # mean cross-entropy over labelled positions
    num_label_tokens: int
    logits: torch.Tensor | None = None  # (B, L, V), only when asked for
    # Per sequence, only when asked for: the summed log-probabilities of its label tokens, (B,) in float32, and
    # how many there are, (B,): what a preference objective compares.
    sequence_logps: torch.Tensor | None = None
    sequence_tokens: torch.Tensor | None = None


class MiniLlava(nn.Module):
    def __init__(self, config: MiniLlavaConfig, vision: VisionEncoder, projector: Projector,
                 language_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.config = config
        self.vision = vision
        self.projector = projector
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.image_token_id = tokenizer.convert_tokens_to_ids(config.image_token)
        config.image_token_id = self.image_token_id
        # The slots one view of an image fills: a fixed-size model's count per image.
        self.tokens_per_image = projector.num_tokens(vision.num_tokens)
        planner = (SingleViewPlanner(self.tokens_per_image) if config.anyres is None
                   else anyres_planner(config.anyres, vision, projector))
        self.encoder = ConversationEncoder(tokenizer, self.image_token_id, planner, config.max_length,
                                           video_planner(config.video, vision, projector))
        use_onednn_linears(self)  # faster float32 inference on CPU; training and other dtypes unchanged

    # -- building, saving, loading ------------------------------------------------------------------------
    @classmethod
    def build(cls, config: MiniLlavaConfig, dtype: torch.dtype = torch.float32,
              base: str | Path | None = None, tokenizer_source: str | Path | None = None) -> MiniLlava:
        """Load the pretrained components named in `config`; the projector starts from random weights."""
        vision = VISION_ENCODERS.get(config.vision.name)(config.vision, dtype=dtype)
        language_model = load_language_model(config.llm, dtype=dtype, base=base)
        tokenizer = load_tokenizer(tokenizer_source or resolve_llm(config.llm, base), config.image_token)
        if config.chat_template is not None:
            tokenizer.chat_template = config.chat_template
        width = language_model.get_input_embeddings().embedding_dim
        projector = build_projector(config.projector, vision.hidden_size, width, vision.grid).to(dtype)
        if config.anyres is not None and config.anyres.image_newline:
            add_image_newline(projector, width)
        return cls(config, vision, projector, language_model, tokenizer)

    @classmethod
    def from_components(cls, vision: str = "efficientnet-lite0", llm: str = "smollm2-135m-instruct",
                        projector: str = "mlp2x_gelu", seed: int = 0, dtype: torch.dtype = torch.float32,
                        chat_template: str | None = None, anyres: AnyResConfig | None = None,
                        video: VideoConfig | None = None, **vision_options) -> MiniLlava:
        """A new model from an encoder and a language model (names, folders or hub ids); `chat_template` (a
        model.templates name or a Jinja file) replaces the language model's own; `anyres` tiles every image;
        `video` says how videos are sampled and pooled (None: the defaults)."""
        config = MiniLlavaConfig(vision=vision_config_for(vision, **vision_options), projector=projector, llm=llm,
                                 chat_template=None if chat_template is None else resolve_chat_template(chat_template),
                                 anyres=anyres, video=video or VideoConfig())
        torch.manual_seed(seed)
        return cls.build(config, dtype=dtype)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> MiniLlava:
        folder = Path(folder)
        config = MiniLlavaConfig.load(folder)
        model = cls.build(config, dtype=dtype, base=folder, tokenizer_source=folder)
        weights = folder / WEIGHTS_NAME
        if weights.is_file():
            stored = load_file(str(weights))
            expected = set(model.stored_state())
            missing, unexpected = sorted(expected - set(stored)), sorted(set(stored) - expected)
            if missing or unexpected:
                raise ValueError(f"{weights}: tensors differ from the components {config.stored}: "
                                 f"missing {missing[:5]}, unexpected {unexpected[:5]}")
            model.load_state_dict(stored, strict=False)
        return model  # build() already loaded every component in dtype

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = self.stored_state()
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        self.config.save(folder)
        self.tokenizer.save_pretrained(folder)

    def stored_state(self) -> dict[str, torch.Tensor]:
        """The tensors of the components in config.stored; tied tensors (embeddings = lm_head) once."""
        for name in self.config.stored:
            if name not in COMPONENTS:
                raise ValueError(f"unknown component {name!r} in config.stored; known: {COMPONENTS}")
        tensors: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for key, value in self.state_dict().items():
            if key.split(".")[0] in self.config.stored and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                tensors[key] = value.detach().contiguous()
        return tensors

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    # -- inputs -------------------------------------------------------------------------------------------
    @property
    def image_planner(self) -> ImagePlanner:
        """How each image becomes views and slots: the encoder's, so that token ids and pixels always agree."""
        return self.encoder.planner

    def prepare(self, conversations: Sequence[Conversation], add_generation_prompt: bool = False,
                left_pad: bool = False) -> Batch:
        """Tokenize conversations and load + preprocess their images into one padded batch."""
        samples = [self.encoder.encode(c, add_generation_prompt=add_generation_prompt) for c in conversations]
        pixels = [self.pixel_values(s.images, s.image_plans) if s.images else None for s in samples]
        labels = None if add_generation_prompt else [s.labels for s in samples]
        return collate([s.input_ids for s in samples], labels, self.tokenizer.pad_token_id, pixels, left_pad,
                       image_plans=[s.image_plans for s in samples])

    def pixel_values(self, images: Sequence[ImageSource], plans: Sequence[ImagePlan] | None = None) -> torch.Tensor:
        """Every image's views as the plan makes them (a video's: its sampled frames), sized by the transform:
        (total views, 3, H, W), image after image; `plans` default to the planners' plans of `images`."""
        transform = self.vision.transform
        if plans is None:
            plans = [self.encoder.plan_image(image) for image in images]
        # Large JPEGs decode at a reduced scale that still covers the target size (AnyRes: its largest grid).
        anyres = self.config.anyres
        side = max(transform.size) if anyres is None else max(max(pinpoint) for pinpoint in anyres.grid_pinpoints)
        views = []
        for source, plan in zip(images, plans, strict=True):
            if isinstance(source, Video):
                made = load_frames(source, plan.views)
                if len(made) != plan.views:
                    raise VideoError(f"{source.name}: {len(made)} frames decode, and its header promised "
                                     f"{plan.views}")
            else:
                made = self.image_planner.views(load_image(source, background=transform.background, min_side=side),
                                                plan)
            if len(made) != plan.views:
                raise ValueError(f"{len(made)} views made of an image planned for {plan.views}")
            views += made
        return transform(views)

    # -- forward ------------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n_views, 3, H, W) -> (n_views, tokens_per_image, LM width)."""
        return self.project(self.vision(pixel_values.to(self.device)))

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (n_views, encoder tokens, encoder width) -> (n_views, tokens_per_image, LM width)."""
        return self.projector(vision_features.to(self.device, self.dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              vision_features: torch.Tensor | None = None,
              image_plans: Sequence[ImagePlan] | None = None) -> torch.Tensor:
        """Token embeddings with image features in the `<image>` slots; images come as pixels or, when the
        encoder is frozen and its outputs were cached, as `vision_features`, each image as its plan's views
        (`image_plans`, in slot order; None: every view is one image of the fixed size)."""
        slots = input_ids == self.image_token_id
        embeddings = self.language_model.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        views = vision_features if vision_features is not None else pixel_values
        num_views = 0 if views is None else len(views)
        if image_plans is None:
            image_plans = [ImagePlan(views=1, tokens=self.tokens_per_image)] * num_views
        check_image_slots(int(slots.sum()), image_plans, num_views, self.tokens_per_image)
        if num_views:
            features = self.project(vision_features) if vision_features is not None else self.encode_images(views)
            features = self.arrange(features, image_plans)
            # An image's tokens and its slots are both consecutive, image after image: one assignment fills all.
            embeddings = embeddings.clone()
            embeddings[slots] = features.to(embeddings.dtype)
        return embeddings

    def arrange(self, features: torch.Tensor, image_plans: Sequence[ImagePlan]) -> torch.Tensor:
        """Projected views (n_views, tokens_per_view, width) -> every image's tokens in slot order (tokens, width):
        each plan's layout arranges its views; views of plans without one are concatenated."""
        if all(plan.layout is None for plan in image_plans):
            return features.reshape(-1, features.shape[-1])
        newline = getattr(self.projector, "image_newline", None)
        chunks = features.split([plan.views for plan in image_plans])
        return torch.cat([chunk.flatten(0, 1) if plan.layout is None else plan.layout.arrange(chunk, newline)
                          for chunk, plan in zip(chunks, image_plans, strict=True)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                return_logits: bool = False, vision_features: torch.Tensor | None = None,
                block_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                sequence_logps: bool = False, image_plans: Sequence[ImagePlan] | None = None) -> ForwardOutput:
        """`block_ids` and `position_ids` (collate, for samples in attention blocks) replace the causal mask and
        the running positions. `sequence_logps` adds each row's summed label-token log-probabilities.
        `image_plans`: the batch's (see `embed`)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeddings = self.embed(input_ids, pixel_values, vision_features, image_plans)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0) if position_ids is None else position_ids
        mask = attention_mask if block_ids is None else block_attention_mask(
            block_ids, self.language_model.config._attn_implementation, embeddings.dtype)
        hidden = self.language_model.get_decoder()(
            inputs_embeds=embeddings, attention_mask=mask, position_ids=positions, use_cache=False
        ).last_hidden_state
        logits = self.logits(hidden) if return_logits else None
        if labels is None:
            return ForwardOutput(None, 0, logits)
        # Project to the vocabulary only where a label is learned: most positions are prompt or image slots.
        targets = labels[:, 1:]
        learned = targets != IGNORE_INDEX
        num = int(learned.sum())
        picked = self.logits(hidden[:, :-1][learned])
        token_logps = -F.cross_entropy(picked.float(), targets[learned], reduction="none")
        loss = -token_logps.mean() if num else hidden.sum() * 0
        if not sequence_logps:
            return ForwardOutput(loss, num, logits)
        rows = learned.nonzero()[:, 0]
        sums = torch.zeros(len(input_ids), device=hidden.device).index_add(0, rows, token_logps)
        return ForwardOutput(loss, num, logits, sums, learned.sum(-1))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.language_model.get_output_embeddings()(hidden)
        cap = getattr(self.language_model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    # -- generation ---------------------------------------------------------------------------------------
    def generate(self, conversations: Sequence[Conversation], config: GenerationConfig | None = None
                 ) -> list[Generation]:
        return generate(self, conversations, config)

    def stream(self, conversations: Sequence[Conversation], config: GenerationConfig | None = None
               ) -> GenerationRun:
        return stream(self, conversations, config)

    def ask(self, text: str, images: Sequence[ImageSource] = (), **options) -> str:
        """One question about zero or more images; options are GenerationConfig fields."""
        return self.generate([build_prompt(text, images)], GenerationConfig(**options))[0].text
