"""minillava: build, train, evaluate and serve LLaVA-style vision-language models.

The public entry points are importable from here; they load lazily so that `minillava data check` does not pay
for importing torch and transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "MiniLlava": "minillava.model",
    "MiniLlavaConfig": "minillava.model",
    "VisionConfig": "minillava.model",
    "GenerationConfig": "minillava.model",
    "Generation": "minillava.model",
    "build_prompt": "minillava.model",
    "Conversation": "minillava.data.conversation",
    "Turn": "minillava.data.conversation",
    "SampleError": "minillava.data.conversation",
    "Video": "minillava.data.conversation",
    "VideoConfig": "minillava.model",
    "load_frames": "minillava.data.video",
    "load_image": "minillava.data.images",
    "ImageTransform": "minillava.data.transforms",
    "ImagePlan": "minillava.data.image_plan",
    "ImagePlanner": "minillava.data.image_plan",
    "AnyResPlanner": "minillava.data.anyres",
    "ConversationEncoder": "minillava.data.tokenize",
    "load_conversations": "minillava.data.formats",
    "check_file": "minillava.data.validate",
    "synthesize_shapes": "minillava.data.synth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'minillava' has no attribute {name!r}")
