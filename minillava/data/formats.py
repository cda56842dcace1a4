"""Read data files (LLaVA, LLaVA-Pretrain, ShareGPT, preference pairs) into Conversation, one record at a time."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry import Registry
from .conversation import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Conversation, Role, SampleError, Turn, Video

# A format turns one JSON object into a Conversation whose images are still the raw path strings;
# parse_record does the checks shared by all formats (videos, paths, placeholders, replies).
FormatParser = Callable[[dict[str, Any]], Conversation]
FORMATS: Registry[FormatParser] = Registry("data format")
register_format = FORMATS.register


class DataFileError(ValueError):
    """A data file that cannot be read at all (missing, not JSON, wrong top-level shape)."""


@dataclass(frozen=True)
class InvalidLine:
    """A JSONL line that is not valid JSON; kept as a record so it is reported, not dropped."""

    line: int
    message: str


def read_records(path: str | Path) -> list[Any]:
    """The records of a `.json` list or a `.jsonl` file (bad JSONL lines become InvalidLine)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"data file {str(path)!r} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(f"data file {str(path)!r} cannot be read as UTF-8 text: {err}") from None
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataFileError(f"data file {str(path)!r}: expected a .json or .jsonl file, got {path.suffix!r}")
    return reader(text, path)


def _read_json(text: str, path: Path) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFileError(
            f"data file {str(path)!r} is not valid JSON ({err}); if it holds one object per line, name it .jsonl"
        ) from None
    if not isinstance(data, list):
        raise DataFileError(f"data file {str(path)!r} must hold a JSON list of records, got {_kind(data)}")
    return data


def _read_jsonl(text: str, path: Path) -> list[Any]:
    records: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (often a trailing one) are not records
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            records.append(InvalidLine(number, str(err)))
    bad = [r for r in records if isinstance(r, InvalidLine)]
    if bad and _is_json(text):  # a pretty-printed JSON list saved as .jsonl
        raise DataFileError(f"data file {str(path)!r} holds one JSON document, not JSON Lines; name it .json")
    if bad and len(bad) == len(records):
        raise DataFileError(f"data file {str(path)!r} is not JSON Lines (line {bad[0].line}: {bad[0].message})")
    return records


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


_READERS: dict[str, Callable[[str, Path], list[Any]]] = {".json": _read_json, ".jsonl": _read_jsonl}


def detect_format(record: Any) -> str:
    """The format of one record: `chosen` or `rejected` -> "preference", `messages` -> "sharegpt",
    `conversations` -> "llava".

    "llava-pretrain" is never guessed: it changes what is learned, so it must be asked for.
    """
    if not isinstance(record, dict):
        raise SampleError(f"record is not a JSON object (got {_kind(record)})")
    if "chosen" in record or "rejected" in record:
        return "preference"
    has_messages, has_conversations = "messages" in record, "conversations" in record
    if has_messages and has_conversations:
        raise SampleError("record has both 'messages' and 'conversations'; pass the format explicitly")
    if has_messages:
        return "sharegpt"
    if has_conversations:
        return "llava"
    keys = ", ".join(repr(k) for k in list(record)[:8]) or "none"
    raise SampleError(f"cannot tell the format: no 'conversations' or 'messages' key (keys: {keys})")


def parse_record(record: Any, fmt: str, image_root: str | Path, *, source: str = "", index: int = 0) -> Conversation:
    """One record as a Conversation with resolved image Paths, or a SampleError naming source[index] (id)."""
    check_format_name(fmt)
    sample_id = record_id(record)
    try:
        return _parse(record, fmt, Path(image_root), sample_id or str(index))
    except SampleError as err:
        raise SampleError(err.reason, source=source, index=index, sample_id=sample_id) from None


def check_format_name(fmt: str) -> None:
    """ValueError for a format name that is neither "auto" nor registered (a caller error, not a sample's)."""
    if fmt != "auto" and fmt not in FORMATS:
        known = ", ".join(repr(n) for n in ["auto", *FORMATS.names()])
        raise ValueError(f"unknown data format {fmt!r}; known: {known}")


def record_id(record: Any) -> str:
    """The record's own id as a string, or "" when it has none."""
    if isinstance(record, dict) and record.get("id") is not None:
        return str(record["id"])
    return ""


def load_conversations(
    path: str | Path, fmt: str = "auto", image_root: str | Path | None = None
) -> tuple[list[Conversation], list[SampleError]]:
    """Every record of a data file, as a Conversation or as the SampleError that says why it is unusable."""
    check_format_name(fmt)
    root = Path(path).parent if image_root is None else Path(image_root)
    conversations: list[Conversation] = []
    errors: list[SampleError] = []
    for index, record in enumerate(read_records(path)):
        try:
            conversations.append(parse_record(record, fmt, root, source=str(path), index=index))
        except SampleError as err:
            errors.append(err)
    return conversations, errors


def _parse(record: Any, fmt: str, image_root: Path, conv_id: str) -> Conversation:
    if isinstance(record, InvalidLine):
        raise SampleError(f"line {record.line} is not valid JSON: {record.message}")
    if not isinstance(record, dict):
        raise SampleError(f"record is not a JSON object (got {_kind(record)})")
    name = detect_format(record) if fmt == "auto" else fmt
    conv = FORMATS.get(name)(record)
    videos = _image_names(record, "videos" if "videos" in record else "video")
    if videos or any(VIDEO_PLACEHOLDER in turn.content for turn in conv.turns):
        _place_videos(conv, videos)
    _check_turns(conv)
    _check_placeholders(conv)
    conv.images = [Video(_resolve_image(media.source, image_root)) if isinstance(media, Video)
                   else _resolve_image(media, image_root) for media in conv.images]
    conv.id = conv_id
    return conv


def _check_turns(conv: Conversation) -> None:
    replies = [i for i, t in enumerate(conv.turns) if t.role == "assistant"]
    if not replies:
        raise SampleError("no assistant reply to learn from")
    for k, i in enumerate(replies, start=1):
        if not conv.turns[i].content.strip():
            raise SampleError(f"assistant reply {k} of {len(replies)} is empty")
    for turn in conv.turns:
        if turn.role != "user" and IMAGE_PLACEHOLDER in turn.content:
            raise SampleError(f"{IMAGE_PLACEHOLDER} in {turn.role} text; images belong in user turns")


_MEDIA_MARKERS = re.compile(f"{re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)}")


def _place_videos(conv: Conversation, videos: list[str]) -> None:
    """Merge a record's videos (`video` or `videos`) into its images in marker order, each `<video>` becoming an
    `<image>` marker that stands for a video. Without `<video>` markers a sample of videos only uses `<image>`
    for them, as LLaVA-Video's data does."""
    for turn in conv.turns:
        if turn.role != "user" and VIDEO_PLACEHOLDER in turn.content:
            raise SampleError(f"{VIDEO_PLACEHOLDER} in {turn.role} text; videos belong in user turns")
    images = list(conv.images)
    markers = [m.group(0) for turn in conv.turns for m in _MEDIA_MARKERS.finditer(turn.content)]
    if VIDEO_PLACEHOLDER not in markers:
        if images:
            raise SampleError(f"a sample with both images and videos marks each video with {VIDEO_PLACEHOLDER} "
                              f"and each image with {IMAGE_PLACEHOLDER}")
        markers = [VIDEO_PLACEHOLDER if m == IMAGE_PLACEHOLDER else m for m in markers]
    wanted = markers.count(VIDEO_PLACEHOLDER)
    if wanted != len(videos):
        raise SampleError(f"{_count(wanted, 'video placeholder')} but {_count(len(videos), 'video')}; write one "
                          f"{VIDEO_PLACEHOLDER} per video, in the order the videos are listed")
    media, images_left, videos_left = [], iter(images), iter(videos)
    for marker in markers:
        if marker == VIDEO_PLACEHOLDER:
            media.append(Video(next(videos_left)))
        else:
            media.append(next(images_left, None))
    conv.images = [m for m in media if m is not None] + list(images_left)  # surplus images: the count check says so
    for turn in conv.turns:
        turn.content = turn.content.replace(VIDEO_PLACEHOLDER, IMAGE_PLACEHOLDER)


def _check_placeholders(conv: Conversation) -> None:
    markers, images = conv.num_placeholders, len(conv.images)
    if markers == images:
        return
    found = f"{_count(markers, IMAGE_PLACEHOLDER + ' placeholder')} but {_count(images, 'image')}"
    if images == 0:
        fix = f"list the image files or remove the {IMAGE_PLACEHOLDER} markers"
    elif markers == 0:
        fix = f"put one {IMAGE_PLACEHOLDER} per image in the user text, e.g. '{IMAGE_PLACEHOLDER}\\n...'"
    else:
        fix = f"write exactly one {IMAGE_PLACEHOLDER} per image, in the order the images are listed"
    raise SampleError(f"{found}; {fix}")


def _resolve_image(image: Any, root: Path) -> Path:
    relative = Path(image)
    try:
        resolved = (relative if relative.is_absolute() else root / relative).resolve()  # follows symlinks, ..
    except (OSError, RuntimeError, ValueError) as err:  # symlink loops, NUL bytes
        raise SampleError(f"image path {str(image)!r} cannot be resolved: {err}") from None
    root = root.resolve()
    if not resolved.is_relative_to(root):
        raise SampleError(
            f"image path {str(image)!r} resolves to {str(resolved)!r}, outside the image root {str(root)!r}; "
            "move the image under the root or pass a different image_root"
        )
    return resolved


# ---- formats -----------------------------------------------------------------------------------------

_LLAVA_ROLES: dict[str, Role] = {"human": "user", "gpt": "assistant", "system": "system"}
_SHAREGPT_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "system": "system"}


@register_format("llava")
def parse_llava(record: dict[str, Any]) -> Conversation:
    turns = _read_turns(record, "conversations", "from", "value", _LLAVA_ROLES)
    return Conversation(turns=turns, images=_image_names(record, "image"))


@register_format("llava-pretrain")
def parse_llava_pretrain(record: dict[str, Any]) -> Conversation:
    turns = _read_turns(record, "conversations", "from", "value", _LLAVA_ROLES)
    if [t.role for t in turns] != ["user", "assistant"]:
        got = ", ".join(t.role for t in turns)
        raise SampleError(f"llava-pretrain expects one human turn then one gpt turn (the caption), got: {got}")
    # The plain template keeps only the images (and videos) as the prompt: the instruction text is dropped.
    prompt = "".join(_MEDIA_MARKERS.findall(turns[0].content))
    return Conversation(
        turns=[Turn("user", prompt), Turn("assistant", turns[1].content)],
        images=_image_names(record, "image"),
        template="plain",
    )


@register_format("sharegpt")
def parse_sharegpt(record: dict[str, Any]) -> Conversation:
    turns = _read_turns(record, "messages", "role", "content", _SHAREGPT_ROLES)
    system = record.get("system")  # LLaMA-Factory's optional top-level system prompt
    if system is not None:
        if not isinstance(system, str):
            raise SampleError(f"'system' must be a string, got {_kind(system)}")
        turns.insert(0, Turn("system", system))
    return Conversation(turns=turns, images=_image_names(record, "images"))


@register_format("preference")
def parse_preference(record: dict[str, Any]) -> Conversation:
    """A preference pair: the prompt, then the chosen reply as the last turn and the rejected one beside it.

    The prompt is `prompt` (one user turn; without `<image>` markers, one per listed image is put first, as TRL's
    vision data leaves them out), or `conversations` / `messages` up to the last user turn (LLaVA's from/value
    or ShareGPT's role/content). `chosen` and `rejected` are strings or assistant messages (LLaMA-Factory's
    {"from": "gpt", "value": ...}, a {"role": "assistant", "content": ...}, or a list of one). Images: `image`
    or `images`.
    """
    images = _image_names(record, "images" if "images" in record else "image")
    if "prompt" in record:
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise SampleError(f"'prompt' must be a non-empty string, got {_kind(prompt)}")
        if images and IMAGE_PLACEHOLDER not in prompt:
            prompt = f"{IMAGE_PLACEHOLDER}\n" * len(images) + prompt
        turns = [Turn("user", prompt)]
    elif "conversations" in record or "messages" in record:
        key = "conversations" if "conversations" in record else "messages"
        first = record[key][0] if isinstance(record[key], list) and record[key] else {}
        llava = isinstance(first, dict) and "from" in first
        turns = _read_turns(record, key, *(("from", "value", _LLAVA_ROLES) if llava else
                                           ("role", "content", _SHAREGPT_ROLES)))
    else:
        raise SampleError("a preference pair needs a 'prompt' string or the 'conversations' up to the last user turn")
    if turns[-1].role != "user":
        raise SampleError(f"the prompt must end with a user turn (it ends with a {turns[-1].role} turn); the "
                          "replies to prefer between go in 'chosen' and 'rejected'")
    chosen, rejected = (_preference_reply(record, side) for side in ("chosen", "rejected"))
    if chosen.strip() == rejected.strip():
        raise SampleError("'chosen' and 'rejected' are the same reply: there is nothing to prefer")
    return Conversation(turns=[*turns, Turn("assistant", chosen)], images=images, rejected=rejected)


def _preference_reply(record: dict[str, Any], side: str) -> str:
    """One side of a pair as text, from a string or an assistant message (alone or in a list of one)."""
    if side not in record:
        raise SampleError(f"missing {side!r}: a preference pair needs both a chosen and a rejected reply")
    value = record[side]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        role = value.get("from", value.get("role"))
        text = value.get("value", value.get("content"))
        if role not in ("gpt", "assistant") or not isinstance(text, str):
            raise SampleError(f"{side!r} must be a string or an assistant message ({{'from': 'gpt', 'value': ...}} "
                              f"or {{'role': 'assistant', 'content': ...}}), got role {role!r}")
        value = text
    if not isinstance(value, str):
        raise SampleError(f"{side!r} must be a string or an assistant message, got {_kind(value)}")
    if not value.strip():
        raise SampleError(f"{side!r} is empty")
    if IMAGE_PLACEHOLDER in value:
        raise SampleError(f"{IMAGE_PLACEHOLDER} in {side!r}; images belong in the prompt")
    return value


def _read_turns(record: dict[str, Any], key: str, role_key: str, text_key: str, roles: dict[str, Role]) -> list[Turn]:
    items = record.get(key)
    if items is None:
        raise SampleError(f"missing {key!r} list")
    if not isinstance(items, list):
        raise SampleError(f"{key!r} must be a list of turns, got {_kind(items)}")
    if not items:
        raise SampleError(f"{key!r} is empty")
    turns = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or role_key not in item or text_key not in item:
            raise SampleError(f"{where} is not an object with {role_key!r} and {text_key!r}")
        role, text = item[role_key], item[text_key]
        if not isinstance(text, str):
            raise SampleError(f"{where} {text_key!r} must be a string, got {_kind(text)}")
        if not isinstance(role, str) or role not in roles:
            raise SampleError(f"{where} has unknown role {role!r} (known: {_known(roles)})")
        turns.append(Turn(roles[role], text))
    return turns


def _image_names(record: dict[str, Any], key: str) -> list[str]:
    """The paths under `key` (images or videos) as a list."""
    value = record.get(key)
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SampleError(f"{key!r} must be a path string or a list of path strings, got {_kind(value)}")
    if any(not n.strip() for n in names):
        raise SampleError(f"{key!r} holds an empty {'video' if key.startswith('video') else 'image'} path")
    return list(names)


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}
    return kinds.get(type(value), "null" if value is None else f"a {type(value).__name__}")


def _known(names: dict[str, Role]) -> str:
    return ", ".join(repr(n) for n in names)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
