"""Import from the llava-hf and the original LLaVA layouts; export -> import -> export keeps every tensor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

from minillava.cli import main
from minillava.data.conversation import Conversation, Turn
from minillava.export import export_hf_llava
from minillava.export.importer import CheckpointError, import_llava
from minillava.export.keys import tower_key_to_hf
from minillava.model import GenerationConfig, MiniLlava, build_prompt
from minillava.model.llava import COMPONENTS

IMAGE = Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 48, 3), dtype=np.uint8))


def redrawn(model: MiniLlava, seed: int = 0, lm: bool = True) -> MiniLlava:
    generator = torch.Generator().manual_seed(seed)
    params = list(model.projector.parameters()) + (list(model.language_model.parameters()) if lm else [])
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    model.config.stored = list(COMPONENTS)
    return model.eval()


def same_logits(a: MiniLlava, b: MiniLlava) -> None:
    """Both models on one batch built by `a` (text, image slots and pixels)."""
    conversation = Conversation([Turn("user", "<image>\nWhat is this?"), Turn("assistant", "A square.")], [IMAGE])
    batch = a.prepare([conversation])
    with torch.no_grad():
        la = a(batch.input_ids, batch.attention_mask, pixel_values=batch.pixel_values, return_logits=True).logits
        lb = b(batch.input_ids, batch.attention_mask, pixel_values=batch.pixel_values, return_logits=True).logits
    vocab = min(la.shape[-1], lb.shape[-1])
    torch.testing.assert_close(la[..., :vocab], lb[..., :vocab], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_export_import_export_keeps_every_tensor(tiny_towers, tiny_llms, tmp_path, tower):
    model = redrawn(MiniLlava.from_components(tiny_towers[tower], tiny_llms["llama"]))
    first = export_hf_llava(model, tmp_path / "hf1")
    assert main(["import", "--from", str(first), "--out", str(tmp_path / "imported")]) == 0
    imported = MiniLlava.from_pretrained(tmp_path / "imported")
    second = export_hf_llava(imported, tmp_path / "hf2")
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert json.loads((first / "config.json").read_text()) == json.loads((second / "config.json").read_text())
    assert (first / "chat_template.jinja").read_text() == (second / "chat_template.jinja").read_text()
    same_logits(model, imported)
    question = [build_prompt("What is this?", [IMAGE])]
    config = GenerationConfig(max_new_tokens=8)
    assert imported.generate(question, config)[0].text == model.generate(question, config)[0].text


def test_import_of_a_llava_hf_checkpoint_written_by_transformers(tiny_towers, tiny_llms, tmp_path):
    """The llava-1.5-7b-hf layout as transformers writes it: untied lm_head, an image token inside the vocab, the
    processor's content-list chat template, a CLIP image processor without padding."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llms["llama"])
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    vision = json.loads(open(f"{tiny_towers['clip']}/config.json").read())
    text = json.loads(open(f"{tiny_llms['llama']}/config.json").read())
    text.update(vocab_size=len(tokenizer) + 63, tie_word_embeddings=False)  # padded, as llava-hf pads to 64
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=len(tokenizer) - 1,
                         image_seq_length=16, vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    hf = LlavaForConditionalGeneration(config).eval()
    src = tmp_path / "llava-hf"
    hf.save_pretrained(src)
    tokenizer.save_pretrained(src)
    for name in ("chat_template.jinja", "tokenizer_config.json"):  # the template lives with the processor there
        data = (src / name).read_text()
        if name.endswith(".json"):
            data = json.dumps({k: v for k, v in json.loads(data).items() if k != "chat_template"})
            (src / name).write_text(data)
        else:
            (src / name).unlink()
    llava_template = ("{% for message in messages %}{{ message['role'].upper() + ': ' }}"
                      "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
                      "{% endfor %}{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
                      "{{ c['text'] + ' ' }}{% endfor %}{% endfor %}"
                      "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    (src / "chat_template.json").write_text(json.dumps({"chat_template": llava_template}))
    (src / "preprocessor_config.json").write_text(open(f"{tiny_towers['clip']}/preprocessor_config.json").read())

    model = import_llava(src, tmp_path / "model")
    imported = MiniLlava.from_pretrained(model)
    assert imported.config.vision.image_aspect == "crop"  # the CLIP processor centre-crops
    prompt = imported.encoder.render([Turn("user", "<image>\nHi")], add_generation_prompt=True)
    assert prompt == "USER: <image>\nHi ASSISTANT:"
    batch = imported.prepare([build_prompt("Hi", [IMAGE])], add_generation_prompt=True)
    with torch.no_grad():
        theirs = hf(input_ids=batch.input_ids, pixel_values=batch.pixel_values).logits
        ours = imported(batch.input_ids, pixel_values=batch.pixel_values, return_logits=True).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def _original_config(model: MiniLlava, tower: str, llm: str, **changes) -> dict:
    config = model.language_model.config.to_dict()
    config.update(
        architectures=["LlavaLlamaForCausalLM"], model_type="llava_llama", _name_or_path=llm,
        mm_vision_tower=tower, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", mm_hidden_size=32, image_aspect_ratio="pad", mm_use_im_start_end=False,
        mm_use_im_patch_token=False, mm_patch_merge_type="flat", tune_mm_mlp_adapter=False,
    )
    config.update(changes)
    return config


def _original_tensors(model: MiniLlava) -> dict[str, torch.Tensor]:
    tensors = {f"model.mm_projector.{k.removeprefix('body.')}": v for k, v in model.projector.state_dict().items()}
    for key, value in model.vision.tower.state_dict().items():
        tensors[f"model.vision_tower.vision_tower.{tower_key_to_hf(key, 'clip')}"] = value
    tensors.update(model.language_model.state_dict())
    return {k: v.clone().contiguous() for k, v in tensors.items()}


def test_import_of_an_original_llava_checkpoint(tiny_towers, tiny_llms, tmp_path):
    model = redrawn(MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"]))
    src = tmp_path / "llava-v1.5"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(_original_config(model, tiny_towers["clip"], tiny_llms["llama"])))
    tensors = _original_tensors(model)
    keys = sorted(tensors)
    torch.save({k: tensors[k] for k in keys[: len(keys) // 2]}, src / "pytorch_model-00001-of-00002.bin")
    torch.save({k: tensors[k] for k in keys[len(keys) // 2:]}, src / "pytorch_model-00002-of-00002.bin")
    weight_map = {k: f"pytorch_model-0000{1 + (i >= len(keys) // 2)}-of-00002.bin" for i, k in enumerate(keys)}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llms["llama"])
    tokenizer.chat_template = None  # as Vicuna's: LLaVA-1.5's conversation format is used
    tokenizer.save_pretrained(src)

    imported = MiniLlava.from_pretrained(import_llava(src, tmp_path / "model"))
    assert imported.config.vision.path == str(tmp_path / "model" / "vision")  # the checkpoint's own tower
    assert imported.encoder.render([Turn("user", "<image>\nHi")], add_generation_prompt=True).endswith(
        "answers to the human's questions. USER: <image>\nHi ASSISTANT:")
    same_logits(model, imported)
    out = export_hf_llava(imported, tmp_path / "hf")  # and back out
    assert LlavaForConditionalGeneration.from_pretrained(out).config.image_seq_length == 16


def test_import_of_a_stage_one_projector(tiny_towers, tiny_llms, tmp_path):
    """A LLaVA stage-1 output: config.json and mm_projector.bin; tower and LM come from their sources."""
    model = redrawn(MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"]), lm=False)
    src = tmp_path / "stage1"
    src.mkdir()
    config = _original_config(model, "openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5")
    (src / "config.json").write_text(json.dumps(config))
    torch.save({k: v for k, v in _original_tensors(model).items() if "mm_projector" in k}, src / "mm_projector.bin")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "x").write_text("")
        import_llava(src, tmp_path / "busy", vision=tiny_towers["clip"], llm=tiny_llms["llama"])
    folder = import_llava(src, tmp_path / "model", vision=tiny_towers["clip"], llm=tiny_llms["llama"])
    imported = MiniLlava.from_pretrained(folder)
    assert imported.config.llm == tiny_llms["llama"] and imported.config.vision.path == tiny_towers["clip"]
    assert imported.tokenizer.chat_template == model.tokenizer.chat_template  # the base LM's own
    same_logits(model, imported)


class NotATensor:
    pass


def test_pickles_that_are_not_plain_tensors_are_refused(tiny_towers, tiny_llms, tmp_path):
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    src = tmp_path / "stage1"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(_original_config(model, tiny_towers["clip"], tiny_llms["llama"])))
    torch.save({"model.mm_projector.0.weight": NotATensor()}, src / "mm_projector.bin")
    with pytest.raises(ValueError, match="weights_only"):
        import_llava(src, tmp_path / "model")


@pytest.mark.parametrize(("changes", "reason"), [
    ({"image_aspect_ratio": "anyres"}, "image_aspect_ratio 'anyres'"),
    ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
    ({"architectures": ["LlavaMptForCausalLM"]}, "architecture 'LlavaMptForCausalLM'"),
])
def test_unsupported_original_checkpoints_are_refused(tiny_towers, tiny_llms, tmp_path, changes, reason):
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(_original_config(model, tiny_towers["clip"], tiny_llms["llama"],
                                                                 **changes)))
    save_file({"model.mm_projector.0.weight": torch.zeros(2, 2)}, src / "model.safetensors")
    with pytest.raises(CheckpointError, match=reason):
        import_llava(src, tmp_path / "model")
