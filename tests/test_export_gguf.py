"""GGUF export for llama.cpp: what the files hold, what they refuse, and llama.cpp itself agreeing with minillava."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from minillava.cli import main
from minillava.export.llamacpp import GGUFExportError, export_gguf, plan_gguf
from minillava.export.llamacpp.language import pairs_from_halves
from minillava.export.llamacpp.runtime import REPORT
from minillava.model import MiniLlava, build_prompt


def _fields(path) -> dict:
    reader = GGUFReader(str(path))
    values = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.")}
    values["tokens"] = len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields \
        else None
    values["tensors"] = {tensor.name: tuple(int(n) for n in tensor.shape) for tensor in reader.tensors}
    return values


def _model(tiny_towers, tiny_llms, tower="clip", llm="llama", projector="mlp2x_gelu", **options):
    return MiniLlava.from_components(tiny_towers[tower], tiny_llms[llm], projector, **options).eval()


def test_llama_rope_rows_become_adjacent_pairs():
    """transformers rotates (x_i, x_{i+d/2}); llama.cpp's llama graph rotates (x_{2i}, x_{2i+1}): after the row
    reorder, llama.cpp's rotation of the reordered query equals the reordered rotation of ours."""
    heads, dim, width = 2, 8, 5
    weight = torch.randn(heads * dim, width)
    x = torch.randn(width)
    theta = torch.rand(dim // 2) * 3

    def rotate_half(q):  # transformers, per head
        first, second = q[: dim // 2], q[dim // 2:]
        return torch.cat([first * theta.cos() - second * theta.sin(), second * theta.cos() + first * theta.sin()])

    def rotate_pairs(q):  # llama.cpp's normal RoPE, per head
        even, odd = q[0::2], q[1::2]
        out = torch.empty_like(q)
        out[0::2], out[1::2] = even * theta.cos() - odd * theta.sin(), odd * theta.cos() + even * theta.sin()
        return out

    reordered = torch.from_numpy(pairs_from_halves(weight.numpy(), heads))
    for head in range(heads):
        ours = rotate_half((weight @ x)[head * dim:(head + 1) * dim])
        theirs = rotate_pairs((reordered @ x)[head * dim:(head + 1) * dim])
        order = torch.arange(dim).reshape(2, dim // 2).T.reshape(-1)  # pair layout -> half layout
        torch.testing.assert_close(theirs, ours[order])


@pytest.mark.parametrize("llm,arch", [("llama", "llama"), ("qwen2", "qwen2")])
def test_the_files_hold_the_decoder_the_vocabulary_and_the_llava_tower(tiny_towers, tiny_llms, tmp_path, llm, arch):
    model = _model(tiny_towers, tiny_llms, llm=llm)
    report = export_gguf(model, tmp_path / "gguf", check=False)
    lm = _fields(tmp_path / "gguf" / "model-f16.gguf")
    config = model.language_model.config
    rows = model.language_model.get_input_embeddings().weight.shape[0]
    assert lm["general.architecture"] == arch and lm["tokens"] == rows
    assert lm[f"{arch}.block_count"] == config.num_hidden_layers
    assert lm[f"{arch}.attention.head_count_kv"] == config.num_key_value_heads
    assert lm["tokenizer.chat_template"] == model.tokenizer.chat_template
    assert lm["tensors"]["blk.1.attn_k.weight"] == (config.hidden_size, config.num_key_value_heads * 16)
    assert ("output.weight" in lm["tensors"]) == (not config.tie_word_embeddings)
    if arch == "qwen2":
        assert "blk.0.attn_q.bias" in lm["tensors"]
    proj = _fields(tmp_path / "gguf" / report.mmproj)
    tower = model.vision.tower.config
    assert proj["clip.projector_type"] == "mlp" and proj["clip.vision.image_size"] == tower.image_size
    assert proj["clip.vision.feature_layer"] == [tower.num_hidden_layers + 1 + model.vision.layers[0]]
    assert {"v.patch_embd.weight", "v.class_embd", "mm.0.weight", "mm.2.bias"} <= set(proj["tensors"])
    # LLaVA reads the second-to-last layer: the last layer is never run, so it is not written
    assert f"v.blk.{tower.num_hidden_layers - 2}.attn_q.weight" in proj["tensors"]
    assert f"v.blk.{tower.num_hidden_layers - 1}.attn_q.weight" not in proj["tensors"]
    saved = json.loads((tmp_path / "gguf" / REPORT).read_text())
    assert saved["tokens_per_image"] == model.tokens_per_image and saved["checked"] is False


@pytest.mark.parametrize("case,reason", [
    ({"tower": "dinov2"}, "cannot be written as an mmproj"),
    ({"projector": "linear"}, "llama.cpp's LLaVA projector"),
    ({"projector": "pixel_shuffle_mlp2x_gelu"}, "llama.cpp's LLaVA projector"),
    ({"llm": "gpt2"}, "language model type 'gpt2'"),
    ({"select": "full"}, "keeps the CLS token"),
])
def test_what_llama_cpp_cannot_hold_is_refused_with_the_reason(tiny_towers, tiny_llms, case, reason):
    with pytest.raises(GGUFExportError, match=reason):
        plan_gguf(_model(tiny_towers, tiny_llms, **case))


@pytest.mark.embedded
def test_the_embedded_efficientnet_is_refused_and_pointed_to_onnx():
    with pytest.raises(GGUFExportError, match="a CNN.*--format onnx"):
        plan_gguf(MiniLlava.from_components())


def test_unknown_quantization_and_a_full_folder_are_refused(tiny_towers, tiny_llms, tmp_path):
    model = _model(tiny_towers, tiny_llms)
    with pytest.raises(GGUFExportError, match="q5"):
        export_gguf(model, tmp_path / "a", quants=("q5",), check=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    with pytest.raises(GGUFExportError, match="not empty"):
        export_gguf(model, tmp_path / "b", check=False)


# --- llama.cpp itself (llama-cpp-python builds it from source; `make test` installs it where it builds) ---

def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")


@pytest.mark.parametrize("llm", ["llama", "qwen2"])
def test_llama_cpp_answers_as_minillava_does(tiny_towers, tiny_llms, tmp_path, llm):
    """f16 files of a SigLIP-tower model in llama.cpp: the same tokens for probe texts, the same image embeddings
    (float16 weights) and the same greedy answer about an image (the export's own check)."""
    _llama_cpp()
    model = _model(tiny_towers, tiny_llms, tower="siglip", llm=llm)
    report = export_gguf(model, tmp_path / "gguf", quants=("f16",))
    assert report.checked and report.tokenizer_equal and not report.notes
    assert report.image_cosine > 0.9999 and report.image_max_abs_diff < 5e-3
    answer = report.answers["f16"]
    assert answer["llama.cpp"] == report.answers["minillava"] and answer["equal"]
    # The greedy answer of a random tiny model can be dull; the next-token logits after the prompt say more.
    from minillava.export.llamacpp.export import CHECK_QUESTION, check_image
    from minillava.export.llamacpp.runtime import ask, load

    image = check_image(model)
    llm = load(tmp_path / "gguf", n_ctx=256)
    reply = ask(llm, image, CHECK_QUESTION, max_tokens=1)  # the prompt's last logits stay in the context
    theirs = np.ctypeslib.as_array(_llama_cpp().llama_get_logits(llm._ctx.ctx), shape=(llm.n_vocab(),)).copy()
    llm.close()
    batch = model.prepare([build_prompt(CHECK_QUESTION, [image])], add_generation_prompt=True)
    with torch.no_grad():
        ours = model(batch.input_ids, batch.attention_mask, pixel_values=batch.pixel_values,
                     return_logits=True).logits[0, -1].numpy()
    assert reply.prompt_tokens == batch.input_ids.shape[1]
    assert np.abs(theirs[: len(ours)] - ours).max() < 1e-2 * np.abs(ours).max()
    assert theirs[: len(ours)].argmax() == ours.argmax()


def test_clip_towers_meet_llama_cpps_cls_last_graph(tiny_towers, tiny_llms, tmp_path):
    """llama.cpp's LLaVA graph runs [patches, CLS] with CLS-first positions and keeps rows 1..N (its issue 25814):
    its image embeddings equal ours computed that way, so the file is right and the difference is the graph's. When
    llama.cpp fixes its graph this test fails: then CLIP exports are exact and the README's note goes."""
    _llama_cpp()
    from minillava.export.llamacpp.runtime import image_embeddings, load

    model = _model(tiny_towers, tiny_llms)
    report = export_gguf(model, tmp_path / "gguf", quants=("f16",))
    assert report.checked and "issue 25814" in report.notes[0] and report.image_cosine < 0.99
    image = _image(model)
    llm = load(tmp_path / "gguf", n_ctx=256)
    theirs = image_embeddings(llm, image)
    llm.close()
    tower = model.vision.tower
    embeddings = tower.embeddings if hasattr(tower, "embeddings") else tower.vision_model.embeddings
    body = tower if hasattr(tower, "encoder") else tower.vision_model
    with torch.no_grad():
        pixels = model.pixel_values([image])
        patches = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        hidden = torch.cat([patches, embeddings.class_embedding.view(1, 1, -1)], 1)
        hidden = body.pre_layrnorm(hidden + embeddings.position_embedding.weight[: hidden.shape[1]])
        for layer in body.encoder.layers[: tower.config.num_hidden_layers + 1 + model.vision.layers[0]]:
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out
        cls_last = model.projector(hidden[:, 1:])[0].numpy()
    np.testing.assert_allclose(theirs, cls_last, atol=5e-3, rtol=0)


def test_quantized_files_load_and_answer_from_the_command_line(tiny_towers, tiny_llms, tmp_path, capsys):
    _llama_cpp()
    from minillava.export.llamacpp.runtime import ask, load

    folder = tmp_path / "model"
    assert main(["init", "--vision", tiny_towers["siglip"], "--llm", tiny_llms["llama"], "--out", str(folder)]) == 0
    out = tmp_path / "gguf"
    assert main(["export", "--model", str(folder), "--format", "gguf", "--quant", "f16", "q8_0", "q4_k_m",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tokenizer equal" in printed and "q4_k_m" in printed
    report = json.loads((out / REPORT).read_text())
    sizes = {quant: entry["bytes"] for quant, entry in report["models"].items()}
    assert sizes["q4_k_m"] < sizes["q8_0"] < sizes["f16"]
    model = MiniLlava.from_pretrained(folder)
    llm = load(out, "q8_0", n_ctx=256)
    answer = ask(llm, _image(model), "What is in the image?", max_tokens=4)
    # the same prompt as ours: the template's text plus exactly tokens_per_image image positions
    assert answer.prompt_tokens == model.prepare([build_prompt("What is in the image?", [_image(model)])],
                                                 add_generation_prompt=True).input_ids.shape[1]
    assert answer.completion_tokens >= 1
    llm.close()


def _image(model):
    from minillava.export.llamacpp.export import check_image

    return check_image(model, seed=3)


def test_check_image_is_the_towers_size(tiny_towers, tiny_llms):
    model = _model(tiny_towers, tiny_llms)
    image = _image(model)
    assert image.size == (model.vision.transform.size[1], model.vision.transform.size[0])
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 1


def test_the_tiny_siglip_component_has_an_exact_llama_cpp_path():
    """The README's offline GGUF recipe trains recipes/tiny.yaml with model.vision=tiny-siglip."""
    model = MiniLlava.from_components("tiny-siglip", "tiny-llama")
    assert plan_gguf(model).tower_kind == "siglip" and model.vision.num_prefix_tokens == 0
