"""The one place that knows where things live.

Environment overrides: ``TOOLATTN_CACHE`` (converted model weights, default
``<repo>/.cache``) and ``TOOLATTN_ARTIFACTS`` (default ``<repo>/artifacts``).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
TOOLS_FILE = DATA / "tools.json"
PROMPTS_FILE = DATA / "prompts.json"
PAPER = ROOT / "paper"
PROFILES_FILE = Path(__file__).resolve().parent / "profiles.toml"


def cache_dir() -> Path:
    return Path(os.environ.get("TOOLATTN_CACHE", ROOT / ".cache"))


def artifacts_root() -> Path:
    return Path(os.environ.get("TOOLATTN_ARTIFACTS", ROOT / "artifacts"))


def model_cache(name: str) -> Path:
    """Folder holding the converted safetensors + tokenizer of a registry model."""
    return cache_dir() / "models" / name


def artifact_dir(profile: str, model: str, analysis: str) -> Path:
    """``artifacts/<profile>/<model>/<analysis>/``."""
    return artifacts_root() / profile / model / analysis


def report_build_dir(profile: str) -> Path:
    return PAPER / "build" / profile
