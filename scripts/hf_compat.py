"""Does an hf-llava export work in a given transformers version? Run by scripts/check_transformers_versions.sh.

    python scripts/hf_compat.py make DIR    # (the minillava venv) export tiny models + our reference outputs
    python scripts/hf_compat.py check DIR   # (any venv with transformers, no minillava) compare with them

`check` imports nothing from minillava: it is what a user of the exported folder runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

QUESTION = "What is this?"
CASES = {  # name -> (tower, image_aspect)
    "clip-pad": ("clip", "pad"),
    "siglip-pad": ("siglip", "pad"),
    "clip-crop": ("clip", "crop"),
    "siglip-crop": ("siglip", "crop"),
}
# The documented minimum transformers for AutoProcessor on each case: LlavaImageProcessor (padding to a square)
# appeared in 4.49, LlavaProcessor's num_additional_image_tokens (towers without CLS, SigLIP) in 4.47.
PROCESSOR_SINCE = {"clip-pad": (4, 49), "siglip-pad": (4, 49), "clip-crop": (4, 46), "siglip-crop": (4, 47)}


def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))


def make(root: Path) -> None:
    from transformers import (
        AutoTokenizer,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    from minillava.export import export_hf_llava
    from minillava.model import GenerationConfig, MiniLlava, build_prompt
    from minillava.model.embedded import smollm2_folder

    parts = root / "components"
    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
                 patch_size=8)
    preprocessors = {
        "clip": {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32},
                 "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
                 "image_mean": [0.48145466, 0.4578275, 0.40821073],
                 "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3},
        "siglip": {"image_processor_type": "SiglipImageProcessor", "size": {"height": 32, "width": 32},
                   "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2},
    }
    for name, model in (("clip", CLIPVisionModel(CLIPVisionConfig(**tower))),
                        ("siglip", SiglipVisionModel(SiglipVisionConfig(**tower)))):
        model.save_pretrained(parts / name)
        (parts / name / "preprocessor_config.json").write_text(json.dumps(preprocessors[name]))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                                      rope_theta=100000.0))
    lm.save_pretrained(parts / "llama")
    tokenizer.save_pretrained(parts / "llama")
    for case, (tower_name, aspect) in CASES.items():
        model = MiniLlava.from_components(str(parts / tower_name), str(parts / "llama"), image_aspect=aspect).eval()
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # larger weights than the init, so that greedy replies vary
            for p in list(model.projector.parameters()) + list(model.language_model.parameters()):
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        folder = export_hf_llava(model, root / case, overwrite=True)
        conversation = build_prompt(QUESTION, [image()])
        batch = model.prepare([conversation], add_generation_prompt=True)
        with torch.no_grad():
            logits = model(batch.input_ids, batch.attention_mask, pixel_values=batch.pixel_values,
                           return_logits=True).logits
        reply = model.generate([conversation], GenerationConfig(max_new_tokens=10))[0]
        prompt = model.encoder.render(conversation.turns, add_generation_prompt=True)
        torch.save({"input_ids": batch.input_ids, "pixel_values": batch.pixel_values, "logits": logits,
                    "reply_ids": torch.tensor(reply.token_ids)}, folder / "reference.pt")
        (folder / "reference.json").write_text(json.dumps({"prompt": prompt, "reply": reply.text}))
    print(f"exported {len(CASES)} tiny models with reference outputs to {root}")


def check(root: Path) -> int:
    import transformers
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

    transformers.logging.set_verbosity_error()
    failures = 0
    for case in CASES:
        folder = root / case
        ref = torch.load(folder / "reference.pt", weights_only=True)
        ref_text = json.loads((folder / "reference.json").read_text())
        results = {}
        model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
        results["load"] = "ok"
        ids, pixels = ref["input_ids"], ref["pixel_values"]
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=pixels).logits[..., : ref["logits"].shape[-1]]
        diff = float((logits - ref["logits"]).abs().max())
        results["logits"] = f"ok ({diff:.1e})" if diff < 1e-4 else f"FAIL ({diff:.1e})"
        generated = model.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                                   max_new_tokens=len(ref["reply_ids"]), do_sample=False)[0, ids.shape[1]:]
        tokenizer = AutoTokenizer.from_pretrained(folder)
        text = tokenizer.decode(generated, skip_special_tokens=True)
        same = text == ref_text["reply"] and generated[: len(ref["reply_ids"])].tolist() == ref["reply_ids"].tolist()
        results["greedy"] = "ok" if same else f"FAIL ({text!r} vs {ref_text['reply']!r})"
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        results["template"] = "ok" if prompt == ref_text["prompt"] else "FAIL"
        version = tuple(int(part) for part in transformers.__version__.split(".")[:2])
        try:
            processor = AutoProcessor.from_pretrained(folder)
            inputs = processor(images=image(), text=prompt, return_tensors="pt")
            same_ids = torch.equal(inputs["input_ids"], ids)
            pixel_diff = float((inputs["pixel_values"] - pixels).abs().max())
            results["processor"] = "ok" if same_ids and pixel_diff < 1e-5 else (
                f"FAIL (ids {'equal' if same_ids else 'differ'}, pixels {pixel_diff:.1e})")
        except Exception as error:  # an old transformers may lack the image processor class: report it
            results["processor"] = f"FAIL ({type(error).__name__}: {str(error).splitlines()[0][:80]})"
        if version < PROCESSOR_SINCE[case] and results["processor"].startswith("FAIL"):
            since = ".".join(map(str, PROCESSOR_SINCE[case]))
            results["processor"] = f"unsupported as documented (needs >= {since}): {results['processor'][5:]}"
        failures += sum(value.startswith("FAIL") for value in results.values())
        report = "  ".join(f"{k}: {v}" for k, v in results.items())
        print(f"transformers {transformers.__version__} {case:11s} {report}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "check"):
        sys.exit(__doc__)
    folder = Path(sys.argv[2])
    if sys.argv[1] == "make":
        make(folder)
    else:
        sys.exit(check(folder))
