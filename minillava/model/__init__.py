"""The model: vision encoder -> projector -> language model."""

from minillava.model.config import AnyResConfig, MiniLlavaConfig, VideoConfig, VisionConfig
from minillava.model.generation import Generation, GenerationRun, build_prompt
from minillava.model.image_slots import ImageSlotError
from minillava.model.llava import ForwardOutput, MiniLlava
from minillava.model.sampling import GenerationConfig

__all__ = [
    "AnyResConfig", "ForwardOutput", "Generation", "GenerationConfig", "GenerationRun", "ImageSlotError", "MiniLlava",
    "MiniLlavaConfig", "VideoConfig", "VisionConfig", "build_prompt",
]
