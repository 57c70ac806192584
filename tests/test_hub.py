"""Hub models load from a real Hugging Face cache layout and from TOOLATTN_LOCAL_<NAME> with no network;
offline with no copy is one line that names the embedded models."""

import os
import subprocess
import sys


from toolattn import paths
from toolattn.models import load_model, local_env

HUB_ID = "toolattn-test/tiny-qwen3"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hf_cache(home, lm) -> None:
    """``lm`` saved as the hub cache holds a download: ``hub/models--org--name/{refs/main, snapshots/<sha>/}``."""
    repo = home / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    lm.model.save_pretrained(snap)
    lm.tokenizer.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


def run(code: str, env: dict) -> subprocess.CompletedProcess:
    """A fresh interpreter, so huggingface_hub reads ``HF_HOME`` as it starts."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOOLATTN_DEVICE": "cpu", **env}
    return subprocess.run([sys.executable, "-c", code], cwd=paths.ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_loads_from_the_hugging_face_cache(tmp_path):
    tiny = load_model("tiny-qwen3", device="cpu")
    hf_cache(tmp_path, tiny)
    code = f"""
from toolattn import models
models.REGISTRY["hub-test"] = models.ModelSpec("hub-test", "hub", "qwen3", "chat", {HUB_ID!r})
lm = models.load_model("hub-test")
assert type(lm.model).__name__ == "Qwen3ForCausalLM", type(lm.model)
assert lm.tokenizer.chat_template and lm.files == {{{HUB_ID!r}: "hub"}}
print("loaded", lm.model.config.num_hidden_layers)
"""
    out = run(code, {"HF_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "loaded 4" in out.stdout


def test_loads_from_toolattn_local(tmp_path, monkeypatch):
    tiny = load_model("tiny-gemma3", device="cpu")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    monkeypatch.setenv(local_env("functiongemma-270m"), str(tmp_path))
    assert local_env("functiongemma-270m") == "TOOLATTN_LOCAL_FUNCTIONGEMMA_270M"
    lm = load_model("functiongemma-270m", device="cpu")
    assert lm.files == {str(tmp_path): "local"} and "sliding_attention" in lm.model.config.layer_types


def test_offline_without_a_copy_is_one_line(tmp_path):
    out = run("from toolattn.errors import analysis_main\nimport analyses.baseline as b\n"
              "import sys; sys.argv = ['baseline', '--profile', 'hub', '--model', 'qwen3-4b']\n"
              "analysis_main(b.run, b.__doc__, 'qwen3-4b')", {"HF_HOME": str(tmp_path), "TOOLATTN_ARTIFACTS":
                                                              str(tmp_path / "art")})
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: cannot load qwen3-4b") and "qwen2.5-coder-1.5b, gemma-3-270m" in lines[0]
    assert "TOOLATTN_LOCAL_QWEN3_4B" in lines[0]
