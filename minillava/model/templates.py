"""Chat templates a model folder can use instead of its language model's own, by exact name."""

from __future__ import annotations

from pathlib import Path

# ChatML as SmolLM2 and Qwen2 write it, without the default system turn their own templates add to every
# conversation ("You are a helpful AI assistant named SmolLM, ...": 20 of the ~65 tokens of a demo question).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_TEMPLATES: dict[str, str] = {"chatml": CHATML}


def resolve_chat_template(value: str) -> str:
    """A CHAT_TEMPLATES name, or the path of a Jinja file, -> the template's text."""
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"chat template {value!r}: neither a known name ({', '.join(CHAT_TEMPLATES)}) nor a file")
    return path.read_text(encoding="utf-8")
