"""Export to the Hugging Face LLaVA format: plain transformers loads it and agrees with our model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, LlavaForConditionalGeneration, pipeline

from minillava.cli import main
from minillava.data.transforms import ImageTransform
from minillava.export import ExportError, export_hf_llava
from minillava.export.processor import preprocessor_config
from minillava.model import GenerationConfig, MiniLlava, build_prompt
from minillava.model.llava import COMPONENTS

QUESTION = "What is this?"


def distinct_model(tiny_towers, tiny_llms, tower: str, seed: int = 0, **options) -> MiniLlava:
    """A tiny model whose greedy replies vary with the image: the LM and projector redrawn at a larger scale."""
    model = MiniLlava.from_components(tiny_towers[tower], tiny_llms["llama"], **options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(model.projector.parameters()) + list(model.language_model.parameters()):
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    model.config.stored = list(COMPONENTS)
    return model


@pytest.fixture(scope="module", params=["clip", "siglip"])
def exported(request, tiny_towers, tiny_llms, tmp_path_factory):
    """(our model, its llava-hf folder) for a CLIP- and a SigLIP-based model."""
    model = distinct_model(tiny_towers, tiny_llms, request.param).eval()
    out = export_hf_llava(model, tmp_path_factory.mktemp("hf") / request.param)
    return model, out


def square_images() -> list[Image.Image]:
    # Square inputs: our preprocessing and transformers' give identical pixels (see test_preprocessing_*).
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)), Image.new("RGB", (32, 32), "navy")]


def hf_inputs(processor, image, question=QUESTION):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=image, text=prompt, return_tensors="pt")


def test_the_folder_has_the_llava_hf_layout(exported):
    model, out = exported
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava" and config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["image_token_index"] == config["image_token_id"] == model.image_token_id
    assert config["image_seq_length"] == model.tokens_per_image == 16
    assert config["vision_feature_layer"] == -2 and config["projector_hidden_act"] == "gelu"
    # SigLIP has no CLS token: "full" keeps all of its patches, as ours does.
    strategy = "default" if model.config.vision.name == "clip" else "full"
    assert config["vision_feature_select_strategy"] == strategy
    assert config["text_config"]["vocab_size"] == model.image_token_id + 1  # a row for the image token
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["num_additional_image_tokens"] == (1 if strategy == "default" else 0)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "multi_modal_projector.linear_1.weight" in keys and "multi_modal_projector.linear_2.bias" in keys
    assert "language_model.model.embed_tokens.weight" in keys
    assert "language_model.lm_head.weight" not in keys  # tied to the embeddings
    assert all(k.startswith("vision_tower.vision_model.") for k in keys if k.startswith("vision_tower."))
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] != "TokenizersBackend"  # transformers 5's name, unknown to 4.x
    assert json.loads((out / "chat_template.json").read_text())["chat_template"] == (
        out / "chat_template.jinja").read_text()


def test_logits_and_greedy_text_equal_ours(exported):
    model, out = exported
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    for image in square_images():
        inputs = hf_inputs(processor, image)
        batch = model.prepare([build_prompt(QUESTION, [image])], add_generation_prompt=True)
        assert torch.equal(inputs["input_ids"], batch.input_ids)
        torch.testing.assert_close(inputs["pixel_values"], batch.pixel_values, atol=1e-6, rtol=0)
        with torch.no_grad():
            theirs = hf(**inputs).logits
            ours = model(batch.input_ids, batch.attention_mask, pixel_values=batch.pixel_values,
                         return_logits=True).logits
        vocab = ours.shape[-1]
        torch.testing.assert_close(theirs[..., :vocab], ours, atol=1e-4, rtol=1e-4)
        generated = hf.generate(**inputs, max_new_tokens=12, do_sample=False)
        text = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        ours_text = model.generate([build_prompt(QUESTION, [image])], GenerationConfig(max_new_tokens=12))[0].text
        assert text == ours_text and len(set(ours_text.split())) > 2  # a varied reply, not one repeated token


def test_pipeline_runs_on_the_export(exported):
    model, out = exported
    pipe = pipeline("image-text-to-text", model=str(out))
    image = square_images()[0]
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    reply = pipe(text=messages, max_new_tokens=6)[0]["generated_text"][-1]
    assert reply["role"] == "assistant"
    ours = model.generate([build_prompt(QUESTION, [image])], GenerationConfig(max_new_tokens=6))[0].text
    assert reply["content"] == ours


def test_large_weights_are_sharded_with_an_index(tiny_towers, tiny_llms, tmp_path):
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"])
    out = export_hf_llava(model, tmp_path / "hf", max_shard_size="4MB", dtype=torch.bfloat16)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) >= 2 and set(index["weight_map"].values()) == set(shards)
    hf = LlavaForConditionalGeneration.from_pretrained(out, dtype="auto")
    assert hf.dtype == torch.bfloat16
    torch.testing.assert_close(hf.get_input_embeddings().weight[:-1].float(),
                               model.language_model.get_input_embeddings().weight.bfloat16().float())


def test_dinov2_exports_for_transformers_but_not_for_vllm(tiny_towers, tiny_llms, tmp_path):
    model = MiniLlava.from_components(tiny_towers["dinov2"], tiny_llms["llama"], image_aspect="crop")
    with pytest.raises(ExportError, match="vLLM's LLaVA accepts CLIP and SigLIP"):
        export_hf_llava(model, tmp_path / "vllm", target="vllm")
    out = export_hf_llava(model, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    image = Image.new("RGB", (50, 40), "teal")
    inputs = hf_inputs(AutoProcessor.from_pretrained(out), image)
    batch = model.prepare([build_prompt(QUESTION, [image])], add_generation_prompt=True)
    with torch.no_grad():
        theirs = hf(**inputs).logits[..., : model.language_model.config.vocab_size]
        ours = model(batch.input_ids, pixel_values=batch.pixel_values, return_logits=True).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_a_linear_projector_exports_as_linear_identity_linear(tiny_towers, tiny_llms, tmp_path):
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["llama"], projector="linear")
    with pytest.raises(ExportError, match="vLLM"):
        export_hf_llava(model, tmp_path / "vllm", target="vllm")
    hf = LlavaForConditionalGeneration.from_pretrained(export_hf_llava(model, tmp_path / "hf")).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = hf.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                         vision_feature_select_strategy="default")
        features = getattr(features, "pooler_output", features)  # transformers 5 wraps them in an output
        torch.testing.assert_close(torch.stack(list(features)), model.encode_images(pixels), atol=1e-5, rtol=1e-5)


def test_a_tokenizer_that_adds_bos_exports_without_it(tiny_towers, tiny_llms, tmp_path):
    """transformers' processor tokenizes the rendered prompt with special tokens on; ours adds none."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    llm = tmp_path / "llm"
    shutil.copytree(tiny_llms["llama"], llm)
    tokenizer = AutoTokenizer.from_pretrained(llm)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    tokenizer.save_pretrained(llm)
    model = MiniLlava.from_components(tiny_towers["clip"], str(llm))
    assert model.tokenizer("Hi")["input_ids"][0] == 0
    processor = AutoProcessor.from_pretrained(export_hf_llava(model, tmp_path / "hf"))
    image = square_images()[1]
    expected = model.prepare([build_prompt(QUESTION, [image])], add_generation_prompt=True).input_ids
    assert torch.equal(hf_inputs(processor, image)["input_ids"], expected)


@pytest.mark.parametrize(("tower", "options", "reason"), [
    ("clip", {"projector": "pixel_shuffle_mlp2x_gelu"}, "token-reducing projector"),
    ("clip", {"projector": "mlp3x_gelu"}, "linear_1 -> activation -> linear_2"),
    ("clip", {"feature_layer": [-1, -2]}, "one integer vision_feature_layer"),
    ("efficientnet-lite0", {}, "has no Hugging Face LLaVA equivalent"),
])
def test_what_the_format_cannot_express_is_refused(tiny_towers, tiny_llms, tmp_path, tower, options, reason):
    vision = tiny_towers.get(tower, tower)
    model = MiniLlava.from_components(vision, tiny_llms["llama"], **options)
    with pytest.raises(ExportError, match=reason):
        export_hf_llava(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_lm_without_the_model_prefix_is_refused(tiny_towers, tiny_llms, tmp_path):
    model = MiniLlava.from_components(tiny_towers["clip"], tiny_llms["gpt2"])
    with pytest.raises(ExportError, match="language_model.model"):
        export_hf_llava(model, tmp_path / "out")


def test_export_command_writes_and_refuses_to_overwrite(tiny_towers, tiny_llms, tmp_path, capsys):
    folder = tmp_path / "model"
    MiniLlava.from_components(tiny_towers["siglip"], tiny_llms["llama"]).save_pretrained(folder)
    out = tmp_path / "hf"
    assert main(["export", "--model", str(folder), "--format", "hf-llava", "--out", str(out),
                 "--target", "vllm"]) == 0
    assert (out / "config.json").is_file()
    assert main(["export", "--model", str(folder), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


# -- preprocessing ----------------------------------------------------------------------------------------------
def _both(tower_folder, mode, image, tmp_path):
    ours = ImageTransform.from_hf_preprocessor(tower_folder, resize_mode=mode)
    ours.reducing_gap = None  # Pillow's draft shrink is ours alone; it only acts beyond 2x downscaling
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(ours)))
    theirs = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    return ours(image)[0], torch.as_tensor(np.asarray(theirs(image, return_tensors="np")["pixel_values"]))[0], ours


@pytest.mark.parametrize("tower", ["clip", "siglip", "dinov2"])
@pytest.mark.parametrize("mode", ["pad", "crop", "squash"])
def test_preprocessing_is_pixel_equal_for_square_images_and_squash(tiny_towers, tmp_path, tower, mode):
    rng = np.random.default_rng(1)
    sizes = [(48, 48), (32, 32)] + ([(57, 23), (20, 70)] if mode == "squash" else [])
    for width, height in sizes:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        ours, theirs, transform = _both(tiny_towers[tower], mode, image, tmp_path)
        if transform.crop_shortest_edge not in (None, *transform.size) and mode == "crop":
            # DINOv2 resizes to 36 then crops 32: we resize only the crop's box (faster), which moves a rare
            # pixel by one grey level.
            levels = (ours - theirs) * torch.tensor(transform.std).view(3, 1, 1) * 255
            assert levels.abs().max() <= 1.001
        else:
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_padding_matches_away_from_the_image_border(tiny_towers, tmp_path):
    """Known differences on non-square images under pad: we resize then pad (faster), LLaVA and transformers pad
    then resize, so the 2 rows at each image/padding border differ; and transformers truncates the mean colour
    to 0..255 (122, 116, 104 for CLIP) where ours rounds it (123, 117, 104): one grey level in the padding."""
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    ours, theirs, transform = _both(tiny_towers["clip"], "pad", image, tmp_path)
    levels = (ours - theirs) * torch.tensor(transform.std).view(3, 1, 1) * 255  # in 0..255 grey levels
    # 40x30 -> 32x24 centred in 32x32: rows 4..27 hold the image, exactly where no padding blends in.
    torch.testing.assert_close(ours[:, 6:26], theirs[:, 6:26], atol=1e-6, rtol=0)
    assert levels[:, :3].abs().max() <= 1.001 and levels[:, 29:].abs().max() <= 1.001
    assert levels.abs().max() < 25
