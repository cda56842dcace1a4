"""Other formats: export to the Hugging Face LLaVA layout, import LLaVA checkpoints, merge LoRA checkpoints."""

from minillava.export.hf_llava import ExportError, export_hf_llava, plan_export
from minillava.export.importer import CheckpointError, import_llava
from minillava.export.merge import MergeError, load_model, merge_checkpoint, merge_to_folder

__all__ = [
    "CheckpointError", "ExportError", "MergeError", "export_hf_llava", "import_llava", "load_model",
    "merge_checkpoint", "merge_to_folder", "plan_export",
]
