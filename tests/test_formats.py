"""Reading LLaVA, LLaVA-Pretrain and ShareGPT records into Conversation, and the errors for bad ones."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillava.data.conversation import Conversation, SampleError, Turn
from minillava.data.formats import (
    FORMATS,
    DataFileError,
    detect_format,
    load_conversations,
    parse_record,
    read_records,
    register_format,
)


def llava(*turns: tuple[str, str], image: Any = None, id: str | None = "s1") -> dict[str, Any]:
    record: dict[str, Any] = {"conversations": [{"from": r, "value": v} for r, v in turns]}
    if image is not None:
        record["image"] = image
    if id is not None:
        record["id"] = id
    return record


def sharegpt(*turns: tuple[str, str], images: list[str] | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"messages": [{"role": r, "content": c} for r, c in turns]}
    if images is not None:
        record["images"] = images
    return record


def parse(record: Any, fmt: str = "auto", root: Path | str = "/data", index: int = 0) -> Conversation:
    return parse_record(record, fmt, root, source="data.json", index=index)


def parse_error(record: Any, fmt: str = "auto", root: Path | str = "/data", index: int = 7) -> SampleError:
    with pytest.raises(SampleError) as info:
        parse(record, fmt, root, index)
    return info.value


# ---- formats ----------------------------------------------------------------------------------------


def test_llava_roles_images_and_id(tmp_path: Path) -> None:
    record = llava(("system", "Be brief."), ("human", "<image>\nWhat is it?"), ("gpt", "A cat."), image="img/1.jpg")
    conv = parse(record, root=tmp_path)
    assert conv.turns == [
        Turn("system", "Be brief."),
        Turn("user", "<image>\nWhat is it?"),
        Turn("assistant", "A cat."),
    ]
    assert conv.images == [(tmp_path / "img/1.jpg").resolve()]
    assert conv.id == "s1"
    assert conv.template == "chat"


def test_llava_image_list_and_multi_turn(tmp_path: Path) -> None:
    record = llava(
        ("human", "<image> and <image>: same animal?"),
        ("gpt", "Yes."),
        ("human", "Which one?"),
        ("gpt", "A dog."),
        image=["a.png", "sub/b.png"],
    )
    conv = parse(record, root=tmp_path)
    assert [t.role for t in conv.turns] == ["user", "assistant", "user", "assistant"]
    assert conv.images == [(tmp_path / "a.png").resolve(), (tmp_path / "sub/b.png").resolve()]


def test_llava_pretrain_is_plain_and_drops_the_instruction(tmp_path: Path) -> None:
    record = llava(("human", "Render a clear and concise summary of the photo.\n<image>"), ("gpt", "a red bus"))
    record["image"] = "00000/000000012.jpg"
    conv = parse(record, "llava-pretrain", tmp_path)
    assert conv.template == "plain"
    assert conv.turns == [Turn("user", "<image>"), Turn("assistant", "a red bus")]
    assert len(conv.images) == 1


def test_llava_pretrain_is_never_guessed() -> None:
    assert detect_format(llava(("human", "hi"), ("gpt", "ho"))) == "llava"
    assert detect_format(sharegpt(("user", "hi"), ("assistant", "ho"))) == "sharegpt"


def test_llava_pretrain_needs_one_human_and_one_gpt_turn() -> None:
    record = llava(("human", "a"), ("gpt", "b"), ("human", "c"), ("gpt", "d"))
    assert "one human turn then one gpt turn" in parse_error(record, "llava-pretrain").reason


def test_sharegpt_roles_images_and_system(tmp_path: Path) -> None:
    record = sharegpt(("user", "<image>Who are they?"), ("assistant", "Two friends."), images=["dir/1.jpg"])
    record["system"] = "You are helpful."
    conv = parse(record, root=tmp_path, index=3)
    assert conv.turns == [
        Turn("system", "You are helpful."),
        Turn("user", "<image>Who are they?"),
        Turn("assistant", "Two friends."),
    ]
    assert conv.images == [(tmp_path / "dir/1.jpg").resolve()]
    assert conv.id == "3"  # no id in the record: its index


def test_explicit_format_overrides_detection() -> None:
    record = sharegpt(("user", "hi"), ("assistant", "ho"))
    assert "missing 'conversations'" in parse_error(record, "llava").reason


def test_unknown_format_name_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="unknown data format 'llava2'.*'sharegpt'"):
        parse(llava(("human", "hi"), ("gpt", "ho")), "llava2")


def test_registry_is_exact_names_and_refuses_duplicates() -> None:
    assert {"llava", "llava-pretrain", "sharegpt"} <= set(FORMATS.names())
    assert "LLaVA" not in FORMATS
    with pytest.raises(KeyError, match="registered twice"):
        register_format("llava")(FORMATS.get("llava"))


# ---- valid edge cases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        llava(("human", "What is 2+2?"), ("gpt", "4")),  # text-only
        llava(("human", "What is this?\n<image>"), ("gpt", "A cat."), image="a.jpg"),  # <image> at the end
        llava(("human", "<image>\nこれは何ですか？"), ("gpt", "猫です。"), image="猫.jpg"),  # non-English
        llava(("human", "Ça va ? <image>"), ("gpt", "Très bien, merci."), image="é/ü.png"),
        sharegpt(("system", "Réponds en français."), ("user", "Bonjour"), ("assistant", "Salut !")),
        llava(("human", "<image><image><image>"), ("gpt", "three"), image=["1.png", "2.png", "3.png"]),
    ],
)
def test_valid_edge_cases_pass(record: dict[str, Any], tmp_path: Path) -> None:
    conv = parse(record, root=tmp_path)
    assert conv.num_placeholders == len(conv.images)


def test_absolute_path_inside_the_root_is_allowed(tmp_path: Path) -> None:
    inside = tmp_path / "img" / "a.png"
    conv = parse(llava(("human", "<image>"), ("gpt", "x"), image=str(inside)), root=tmp_path)
    assert conv.images == [inside.resolve()]


# ---- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (["not", "an", "object"], "record is not a JSON object (got a list)"),
        ({"id": "s1", "foo": 1}, "no 'conversations' or 'messages' key"),
        ({"id": "s1", "conversations": []}, "'conversations' is empty"),
        ({"id": "s1", "conversations": "hi"}, "'conversations' must be a list of turns, got a string"),
        ({"id": "s1", "conversations": [{"from": "human"}]}, "conversations[0] is not an object with 'from'"),
        ({"id": "s1", "conversations": ["hi"]}, "conversations[0] is not an object with 'from' and 'value'"),
        (
            {"id": "s1", "conversations": [{"from": "human", "value": 3}]},
            "conversations[0] 'value' must be a string, got an integer",
        ),
        (
            llava(("human", "hi"), ("bot", "ho")),
            "conversations[1] has unknown role 'bot' (known: 'human', 'gpt', 'system')",
        ),
        (llava(("human", "hi"), ("human", "ho")), "no assistant reply to learn from"),
        (llava(("human", "hi"), ("gpt", "  ")), "assistant reply 1 of 1 is empty"),
        (
            llava(("human", "<image><image>"), ("gpt", "x"), image="a.png"),
            "2 <image> placeholders but 1 image; write exactly one <image> per image",
        ),
        (
            llava(("human", "hi"), ("gpt", "x"), image="a.png"),
            "0 <image> placeholders but 1 image; put one <image> per image in the user text",
        ),
        (
            llava(("human", "<image> hi"), ("gpt", "x")),
            "1 <image> placeholder but 0 images; list the image files or remove",
        ),
        (
            llava(("human", "<image>"), ("gpt", "<image>"), image="a.png"),
            "<image> in assistant text; images belong in user turns",
        ),
        (llava(("human", "<image>"), ("gpt", "x"), image=""), "'image' holds an empty image path"),
        (llava(("human", "<image>"), ("gpt", "x"), image=3), "'image' must be a path string or a list"),
    ],
)
def test_each_bad_record_names_file_index_id_and_reason(record: Any, reason: str) -> None:
    err = parse_error(record, index=7)
    assert reason in err.reason
    assert (err.source, err.index) == ("data.json", 7)
    message = str(err)
    assert message.startswith("data.json[7]")
    assert reason in message
    if isinstance(record, dict):
        assert err.sample_id == "s1"
        assert "(id 's1')" in message


def test_sharegpt_unknown_role_lists_its_own_roles() -> None:
    err = parse_error(sharegpt(("user", "hi"), ("gpt", "ho")))
    assert "messages[1] has unknown role 'gpt' (known: 'user', 'assistant', 'system')" in err.reason


def test_both_keys_is_ambiguous() -> None:
    record = {"messages": [], "conversations": []}
    assert "pass the format explicitly" in parse_error(record).reason


# ---- image paths stay inside the root ---------------------------------------------------------------


def test_dotdot_escape_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    err = parse_error(llava(("human", "<image>"), ("gpt", "x"), image="../x.png"), root=root)
    assert "image path '../x.png' resolves to" in err.reason
    assert "outside the image root" in err.reason


def test_dotdot_that_comes_back_inside_is_fine(tmp_path: Path) -> None:
    conv = parse(llava(("human", "<image>"), ("gpt", "x"), image="a/../b.png"), root=tmp_path)
    assert conv.images == [(tmp_path / "b.png").resolve()]


def test_absolute_path_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    outside = str(tmp_path / "secret.png")
    err = parse_error(llava(("human", "<image>"), ("gpt", "x"), image=outside), root=root)
    assert "outside the image root" in err.reason


def test_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "link.png")
    os.symlink(tmp_path, root / "up")
    for name in ("link.png", "up/secret.png"):
        err = parse_error(llava(("human", "<image>"), ("gpt", "x"), image=name), root=root)
        assert "outside the image root" in err.reason


def test_symlinked_root_itself_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "root")
    conv = parse(llava(("human", "<image>"), ("gpt", "x"), image="a.png"), root=tmp_path / "root")
    assert conv.images == [(tmp_path / "real" / "a.png").resolve()]


# ---- files ------------------------------------------------------------------------------------------


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_with_a_broken_line_reports_it_and_keeps_the_rest(tmp_path: Path) -> None:
    good = json.dumps(llava(("human", "hi"), ("gpt", "ho"), id="a"))
    path = write_jsonl(tmp_path / "d.jsonl", [good, '{"id": "b", "conversations": [', "", good])
    records = read_records(path)
    assert len(records) == 3  # the blank line is not a record
    convs, errors = load_conversations(path)
    assert len(convs) == 2
    assert len(errors) == 1
    assert errors[0].index == 1
    assert errors[0].reason.startswith("line 2 is not valid JSON: ")
    assert str(errors[0]).startswith(f"{path}[1]: line 2 is not valid JSON")


def test_load_conversations_accounts_for_every_record(tmp_path: Path) -> None:
    records = [
        llava(("human", "<image>"), ("gpt", "x"), image="a.png", id="ok1"),
        llava(("human", "hi"), ("bot", "x"), id="bad1"),
        llava(("human", "hi"), ("gpt", "x"), id=None),
        "oops",
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    convs, errors = load_conversations(path)
    assert [c.id for c in convs] == ["ok1", "2"]
    assert [(e.index, e.sample_id) for e in errors] == [(1, "bad1"), (3, "")]
    assert convs[0].images == [(tmp_path / "a.png").resolve()]  # image root defaults to the file's folder


def test_load_conversations_with_explicit_root_and_format(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    record = llava(("human", "Describe.\n<image>"), ("gpt", "a bus"), image="x.jpg")
    path.write_text(json.dumps([record]), encoding="utf-8")
    convs, errors = load_conversations(path, "llava-pretrain", image_root=tmp_path / "imgs")
    assert not errors
    assert convs[0].template == "plain"
    assert convs[0].images == [(tmp_path / "imgs" / "x.jpg").resolve()]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("d.json", "{not json", "is not valid JSON"),
        ("d.json", '{"id": 1}', "must hold a JSON list of records, got an object"),
        ("d.jsonl", "garbage\nmore garbage\n", "is not JSON Lines"),
        ("d.jsonl", '[\n{"id": 1}\n]\n', "name it .json"),
        ("d.json", '{"a": 1}\n{"b": 2}\n', "name it .jsonl"),
        ("d.txt", "[]", "expected a .json or .jsonl file"),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataFileError, match=message) as info:
        read_records(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not found") as info:
        load_conversations(tmp_path / "nope.json")
    assert "nope.json" in str(info.value)


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([llava(("human", "hi"), ("gpt", "ho"))]).encode())
    assert len(read_records(path)) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["<image>", "human"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["conversations", "messages", "image", "images", "id", "from", "value", "role"])
record_like = st.dictionaries(keys, json_values, max_size=4)


@settings(max_examples=300, deadline=None)
@given(record=json_values | record_like, fmt=st.sampled_from(["auto", *FORMATS.names()]))
def test_any_json_gives_a_conversation_or_a_sample_error(record: Any, fmt: str) -> None:
    try:
        conv = parse_record(record, fmt, "/data", source="x.json", index=0)
    except SampleError:
        return
    assert conv.num_placeholders == len(conv.images)
    assert any(t.role == "assistant" for t in conv.turns)
