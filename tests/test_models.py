"""The registry: unknown names, hub failures, the hub path on local files, sha256 checks."""

import time

import pytest

from toolattn import models
from toolattn.models import ModelError, get_spec, load_model


def test_unknown_model_lists_known():
    with pytest.raises(ModelError, match="known models: .*qwen2.5-coder-1.5b"):
        get_spec("gpt-17")


def test_hub_unreachable_fails_fast_with_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    t0 = time.time()
    with pytest.raises(ModelError, match="unreachable.*qwen2.5-coder-1.5b, gemma-3-270m"):
        load_model("qwen3-4b")
    assert time.time() - t0 < 30


def test_hub_entry_loads_a_local_folder(tmp_path):
    tiny = load_model("tiny-qwen3")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    lm = load_model("qwen3-4b", local_path=tmp_path)
    assert lm.spec.name == "qwen3-4b" and lm.model.config.num_hidden_layers == 4
    assert lm.tokenizer.chat_template == tiny.tokenizer.chat_template


def test_corrupt_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLATTN_CACHE", str(tmp_path / "cache"))
    chunk = tmp_path / "part01.bin"
    chunk.write_bytes(b"not a model")
    monkeypatch.setattr(models, "_chunks", lambda spec: [chunk])
    with pytest.raises(ModelError, match="gemma-3-270m-q4_k_m.gguf: sha256 .* does not match"):
        models.assemble_gguf(get_spec("gemma-3-270m"))
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # nothing half-written is left


def test_untrained_child_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    with pytest.raises(ModelError, match="make finetune"):
        load_model("gemma-3-270m-tools", profile="fast")


def test_the_child_needs_its_profile_named(tmp_path, monkeypatch):
    """A tuned child exists once per profile; loading one without naming the profile is refused
    (a default would load another profile's child)."""
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    with pytest.raises(ModelError, match="profile="):
        load_model("gemma-3-270m-tools")


def test_tiny_models_match_their_families():
    g = load_model("tiny-gemma3")
    assert "sliding_attention" in g.model.config.layer_types
    assert type(load_model("tiny-qwen2").model).__name__ == "Qwen2ForCausalLM"
    assert type(load_model("tiny-qwen3").model).__name__ == "Qwen3ForCausalLM"
