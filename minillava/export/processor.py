"""The processor side of a llava-hf folder: image preprocessing, token expansion and the chat template."""

from __future__ import annotations

from typing import Any

from minillava.data.conversation import IMAGE_PLACEHOLDER
from minillava.data.transforms import ImageTransform

# transformers' image processor that can pad to a square with the mean colour (transformers >= 4.49); the other
# modes use CLIPImageProcessor, which every transformers version since 4.30 has.
PAD_PROCESSOR = "LlavaImageProcessor"
PLAIN_PROCESSOR = "CLIPImageProcessor"
# AnyRes (LLaVA-NeXT tiles): the image processor and processor that llava_next folders name.
ANYRES_IMAGE_PROCESSOR = "LlavaNextImageProcessor"
ANYRES_PROCESSOR = "LlavaNextProcessor"


class PreprocessingError(ValueError):
    """Our image preprocessing has no equivalent in the Hugging Face image processors."""


def preprocessor_config(transform: ImageTransform) -> dict[str, Any]:
    """A preprocessor_config.json that reproduces `transform` in transformers' image processors.

    pad: pad to a square with the mean colour, then resize (LLaVA-1.5); crop: resize the shortest edge, centre
    crop; squash: resize to the size. The geometry differs from ours only in resampling details at the
    image/padding border (we resize before padding, which is faster); see tests/test_export_processor.py.
    """
    height, width = transform.size
    common: dict[str, Any] = {
        "do_convert_rgb": True, "do_resize": True, "resample": transform.resample,
        "do_rescale": True, "rescale_factor": transform.rescale_factor,
        "do_normalize": True, "image_mean": list(transform.mean), "image_std": list(transform.std),
        "crop_size": {"height": height, "width": width}, "processor_class": "LlavaProcessor",
    }
    if transform.resize_mode == "pad":
        if height != width:
            raise PreprocessingError(f"pad to a {height}x{width} (non-square) target: transformers' LLaVA image "
                                     "processor only pads to a square; use a square image size or --image-aspect crop")
        return {"image_processor_type": PAD_PROCESSOR, "do_pad": True, **common,
                "size": {"height": height, "width": width}, "do_center_crop": False}
    if transform.resize_mode == "crop":
        edge = transform.crop_shortest_edge or min(height, width)
        return {"image_processor_type": PLAIN_PROCESSOR, **common,
                "size": {"shortest_edge": edge}, "do_center_crop": True}
    if transform.resize_mode == "squash":
        return {"image_processor_type": PLAIN_PROCESSOR, **common,
                "size": {"height": height, "width": width}, "do_center_crop": False}
    raise PreprocessingError(f"resize mode {transform.resize_mode!r} has no transformers equivalent")


def anyres_preprocessor_config(transform: ImageTransform, grid_pinpoints: list[list[int]]) -> dict[str, Any]:
    """A preprocessor_config.json for LlavaNextImageProcessor that cuts the views our AnyRes planner cuts.

    It resizes the whole image to the view size (the global view), fits the image into the best grid resolution
    and pads it with black, as our planner does, cuts tiles of crop_size.height, then resizes each view to `size`,
    which for views already at that size changes nothing.
    """
    height, width = transform.size
    if height != width:
        raise PreprocessingError(f"{height}x{width} (non-square) views: LlavaNextImageProcessor cuts square tiles; "
                                 "use a square image size")
    return {
        "image_processor_type": ANYRES_IMAGE_PROCESSOR, "processor_class": ANYRES_PROCESSOR,
        "do_convert_rgb": True, "do_resize": True, "size": {"height": height, "width": width},
        "resample": transform.resample, "do_center_crop": False, "crop_size": {"height": height, "width": width},
        "do_rescale": True, "rescale_factor": transform.rescale_factor,
        "do_normalize": True, "image_mean": list(transform.mean), "image_std": list(transform.std),
        "do_pad": True,  # pads the batch to a common number of views, not the image
        "image_grid_pinpoints": [list(pinpoint) for pinpoint in grid_pinpoints],
    }


def processor_config(patch_size: int, select_strategy: str, num_additional_image_tokens: int,
                     image_token: str = IMAGE_PLACEHOLDER, processor_class: str = "LlavaProcessor") -> dict[str, Any]:
    """LlavaProcessor's settings: it expands each image token into (H/patch)*(W/patch) + additional tokens,
    minus one under the "default" strategy (LlavaNextProcessor: plus the tiles' unpadded patches and row ends)."""
    return {"processor_class": processor_class, "image_token": image_token, "patch_size": patch_size,
            "vision_feature_select_strategy": select_strategy,
            "num_additional_image_tokens": num_additional_image_tokens}


def flatten_content_template(image_types: tuple[str, ...], image_text: str) -> str:
    """A Jinja prefix that rewrites content lists ([{"type": "image"}, {"type": "text", "text": ...}]) into plain
    strings: each part of `image_types` becomes the Jinja expression `image_text` (of `part`), each text part its
    text. Prepended to a language model's own template, which then runs unchanged."""
    return (
        "{%- set flat = namespace(messages=[]) -%}"
        "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}"
        "{%- set flat.messages = flat.messages + [message] -%}"
        "{%- else -%}"
        "{%- set text = namespace(value='') -%}"
        "{%- for part in message['content'] -%}"
        f"{{%- if part['type'] in {image_types!r} -%}}{{%- set text.value = text.value + {image_text} -%}}"
        "{%- elif part['type'] == 'text' -%}{%- set text.value = text.value + part['text'] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- set flat.messages = flat.messages + [{'role': message['role'], 'content': text.value}] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- set messages = flat.messages -%}"
    )


# For transformers and vLLM: an image becomes "<image>\n" as in our prompts.
FLATTEN_CONTENT_PREFIX = flatten_content_template(("image", "image_url"), "'" + IMAGE_PLACEHOLDER + "\\n'")


def multimodal_chat_template(text_template: str) -> str:
    """The LM's chat template, accepting content lists with image parts as well as plain strings."""
    return FLATTEN_CONTENT_PREFIX + text_template
