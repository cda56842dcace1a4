"""The command line, run in-process: init, generate, data check, data synth."""

from __future__ import annotations

import json

from PIL import Image

from minillava.cli import main
from minillava.model import GenerationConfig, MiniLlava, build_prompt


def test_synth_then_check_is_clean(tmp_path, capsys):
    assert main(["data", "synth", "shapes", "--out", str(tmp_path), "--n", "6", "--seed", "3",
                 "--image-size", "64"]) == 0
    data = tmp_path / "shapes.json"
    capsys.readouterr()
    assert main(["data", "check", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_check_reports_each_bad_sample_and_fails(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    records = [
        {"id": "good", "image": "ok.png", "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                           {"from": "gpt", "value": "Hello"}]},
        {"id": "missing", "image": "nope.png", "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                                {"from": "gpt", "value": "Hello"}]},
        {"id": "corrupt", "image": "broken.png", "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                                  {"from": "gpt", "value": "Hello"}]},
        {"id": "two", "image": "ok.png", "conversations": [{"from": "human", "value": "<image><image>"},
                                                          {"from": "gpt", "value": "Hello"}]},
        {"id": "escape", "image": "../ok.png", "conversations": [{"from": "human", "value": "<image>"},
                                                                {"from": "gpt", "value": "Hello"}]},
    ]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    assert main(["data", "check", str(data), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(r["index"], r["id"]) for r in report] == [(1, "missing"), (2, "corrupt"), (3, "two"), (4, "escape")]
    assert main(["data", "check", str(data)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(str(data) in line for line in lines)
    assert "data.json[1] (id 'missing')" in lines[0] and "not found" in lines[0]


def test_init_and_generate(tiny_towers, tiny_llms, images, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["init", "--vision", tiny_towers["clip"], "--llm", tiny_llms["qwen2"], "--projector", "linear",
                 "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["projector"] == "linear" and config["vision"]["name"] == "clip"
    image = tmp_path / "red.png"
    images[0].save(image)
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--image", str(image), "--prompt", "Colour?",
                 "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out.strip()
    expected = MiniLlava.from_pretrained(out).generate([build_prompt("Colour?", [image])],
                                                       GenerationConfig(max_new_tokens=8))[0].text
    assert printed == expected.strip()


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "none"), "--prompt", "x"]) == 2
    assert "no minillava config" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
