import pytest

from toolattn import paths
from toolattn.models import load_model
from toolattn.tools import core_tools

TINY = ["tiny-qwen2", "tiny-qwen3", "tiny-gemma3"]


@pytest.fixture(scope="session")
def tools():
    return core_tools()


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
