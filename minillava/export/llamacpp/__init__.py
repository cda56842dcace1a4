"""GGUF export for llama.cpp: the language model and an mmproj file for its multimodal library, and running
them through llama-cpp-python."""

from minillava.export.llamacpp.export import GGUFExport, GGUFExportError, export_gguf, plan_gguf

__all__ = ["GGUFExport", "GGUFExportError", "export_gguf", "plan_gguf"]
