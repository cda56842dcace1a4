"""The demo: train the embedded default model on offline data, evaluate it after each stage, report."""

from minillava.demo.presets import PRESETS, Preset
from minillava.demo.run import run_demo

__all__ = ["PRESETS", "Preset", "run_demo"]
