import os

import pytest
import torch

# The tiny-model suite checks exact equalities, so it runs in float32 on whatever device the setting
# picks (CUDA when a GPU is present): TOOLATTN_DTYPE=bfloat16 would run it in bf16 instead.
os.environ.setdefault("TOOLATTN_DTYPE", "float32")

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (CI has none; run on a GPU machine)")

from toolattn import paths
from toolattn.models import load_model
from toolattn.tools import core_tools

TINY = ["tiny-qwen2", "tiny-qwen3", "tiny-gemma3", "tiny-functiongemma"]


@pytest.fixture(scope="session")
def tools():
    return core_tools()


@pytest.fixture(scope="session")
def catalog_tools():
    """The whole 50-tool catalog, core tools first."""
    from toolattn.tools import load_catalog

    return load_catalog()


@pytest.fixture(scope="session", params=TINY)
def tiny(request):
    """Each tiny random model (Qwen2, Qwen3, Gemma3 with sliding-window layers)."""
    return load_model(request.param)


def real_tokenizer(name: str):
    """The tokenizer of a converted embedded model (built by `make models`)."""
    from transformers import AutoTokenizer

    folder = paths.model_cache(name)
    if not (folder / "config.json").exists():
        pytest.fail(f"{folder} is missing: run `make models` first (make test does this)")
    return AutoTokenizer.from_pretrained(folder)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A failed pinned number points at the README's rule for regenerating pins."""
    failed = [r for r in terminalreporter.stats.get("failed", [])
              if "regression/test_pins" in r.nodeid.replace("\\", "/")
              and "no finished artifact" not in (r.longreprtext or "")]
    if failed:
        terminalreporter.write_line(
            f"{len(failed)} pinned number(s) differ from tests/regression/test_pins/. Regenerate pins only after an "
            "intended change of method, data or model, never to make a failing check pass: see README.md, "
            "section 'Pinned numbers'.", red=True, bold=True)
