"""Artifacts are written atomically, the manifest marks a finished run, and runs resume from chunks."""

import json

import pytest

from toolattn import artifacts
from toolattn.artifacts import Run, load_profile, load_result


@pytest.fixture
def art(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    return tmp_path


def test_run_writes_result_and_manifest(art):
    with Run("fast", "m", "demo", {"n": 3}, {"data.json": "abc"}, seed=7) as run:
        run.write_csv("table", [{"a": 1, "b": 2.5}])
        run.result({"acc": {"value": 0.5, "lo": 0.4, "hi": 0.6, "n": 10}})
    d = art / "fast" / "m" / "demo"
    man = json.loads((d / "manifest.json").read_text())
    assert man["config"] == {"n": 3} and man["inputs"] == {"data.json": "abc"} and man["seed"] == 7
    assert {"git_sha", "git_dirty", "versions", "device", "dtype", "wall_time_s"} <= set(man)
    assert {"device_name", "torch", "cuda"} <= set(man)  # what ran: device, dtype, torch and CUDA versions
    assert "torch" in man["versions"]
    assert load_result("fast", "m", "demo")["tables"] == {"table": "table.csv"}
    assert (d / "table.csv").read_text().splitlines() == ["a,b", "1,2.5"]
    assert not list(d.glob(".*.tmp"))


def test_failed_run_leaves_no_manifest(art):
    with pytest.raises(RuntimeError):
        with Run("fast", "m", "demo", {}, {}) as run:
            run.result({"x": 1})
            raise RuntimeError("interrupted")
    assert not (art / "fast" / "m" / "demo" / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="make fast"):
        load_result("fast", "m", "demo")


def test_rerun_resumes_from_chunks(art):
    calls = []

    def work(i):
        calls.append(i)
        return {"i": i}

    with pytest.raises(KeyboardInterrupt):
        with Run("fast", "m", "demo", {"k": 1}, {}) as run:
            run.chunk("c0", lambda: work(0))
            raise KeyboardInterrupt
    with Run("fast", "m", "demo", {"k": 1}, {}) as run:
        assert run.chunk("c0", lambda: work(0)) == {"i": 0}
        run.chunk("c1", lambda: work(1))
        run.result({})
    assert calls == [0, 1]
    with Run("fast", "m", "demo", {"k": 2}, {}) as run:  # a changed config does not reuse chunks
        run.chunk("c0", lambda: work(0))
        run.result({})
    assert calls == [0, 1, 0]


def test_a_failing_chunk_is_named_and_the_finished_ones_kept(art):
    """An error while computing a chunk says which chunk (the input) failed; earlier chunks stay."""
    def work(n):
        if n == "bad":
            raise KeyError("no such field")
        return n
    with pytest.raises(KeyError) as e:
        with Run("fast", "m", "demo", {}, {}) as run:
            run.chunks(["ok", "bad"], work)
    assert any("'bad'" in note and "rerun the same command" in note for note in e.value.__notes__)
    assert [p.name.split(".")[0] for p in (art / "fast" / "m" / "demo" / "chunks").iterdir()] == ["ok"]


def test_an_expected_failure_in_a_chunk_is_one_line_naming_the_chunk(art, capsys):
    from toolattn.errors import cli_errors

    with pytest.raises(SystemExit) as e, cli_errors():
        with Run("fast", "m", "demo", {}, {}) as run:
            run.chunks(["bad"], lambda n: {}[n])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: bad [toolattn] while computing chunk 'bad'"), err


def test_code_edited_during_a_run_keeps_its_chunk_key(art, monkeypatch):
    """The chunk key is fixed when the run starts: an edit of the library while it runs does not split its
    chunks between two keys (the run finishes; a later run with the new code recomputes them)."""
    hashes = iter(f"code-{i}" for i in range(100))
    monkeypatch.setattr(artifacts, "code_hash", lambda analysis: next(hashes))
    calls = []
    with Run("fast", "m", "demo", {}, {}) as run:
        got = run.chunks(["a", "b", "c"], lambda n: calls.append(n) or n.upper())
        run.result({})
    assert got == ["A", "B", "C"] and calls == ["a", "b", "c"]
    assert len({p.name.split(".")[1] for p in (art / "fast" / "m" / "demo" / "chunks").iterdir()}) == 1
    with Run("fast", "m", "demo", {}, {}) as run:  # new code: recomputed
        run.chunks(["a"], lambda n: calls.append(n) or n)
        run.result({})
    assert calls == ["a", "b", "c", "a"]


def test_atomic_write_replaces(tmp_path):
    p = tmp_path / "x.json"
    artifacts.write_json(p, {"a": 1})
    artifacts.write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2} and len(list(tmp_path.iterdir())) == 1


def test_profiles():
    assert load_profile("fast")["baseline"]["n_per_tool"] < load_profile("full")["baseline"]["n_per_tool"]
    with pytest.raises(KeyError, match="known profiles"):
        load_profile("nope")


@pytest.mark.parametrize("profile", ["fast", "full", "hub"])
def test_per_model_settings_override_known_keys(profile):
    """A per-model entry may only change a setting its analysis has (a misspelt key would be ignored),
    and a fine-tuning grid only searches settings of the training run, with a validation part to choose on."""
    from toolattn.finetune import TRAIN_KEYS

    prof = load_profile(profile)
    for analysis, table in prof.items():
        if not isinstance(table, dict):
            continue
        for model, override in table.get("per_model", {}).items():
            unknown = set(override) - set(table)
            assert not unknown, f"[{profile}.{analysis}.per_model.{model}] sets unknown keys {sorted(unknown)}"
    ft = prof.get("finetune")
    if ft and "grid" in ft:
        assert set(ft["grid"]) <= set(TRAIN_KEYS) and 0 < ft["validation_share"] < 1
        assert all(k in ft or k in ft["grid"] for k in TRAIN_KEYS if k != "seed")
