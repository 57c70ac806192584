"""`accelerate launch --num_processes 2` splits an analysis's chunks between processes and gives the same
result.json as one process (CPU, a tiny model)."""

import json
import os
import subprocess
import sys

import pytest

from toolattn import paths


TWO = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
       "--mixed_precision", "no", "--dynamo_backend", "no"]


def analysis(art, launcher: list[str], name: str = "baseline") -> dict:
    env = {**os.environ, "TOOLATTN_ARTIFACTS": str(art), "OMP_NUM_THREADS": "1", "TOOLATTN_DEVICE": "cpu"}
    cmd = launcher + ["-m", f"analyses.{name}", "--profile", "fast", "--model", "tiny-qwen2"]
    out = subprocess.run(cmd, cwd=paths.ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    d = art / "fast" / "tiny-qwen2" / name
    result = (d / "result.json").read_text()  # timings live in the manifest: compared byte for byte
    return {"result": result, "requests": (d / "requests.csv").read_text() if (d / "requests.csv").exists() else None,
            "chunks": sorted(p.name for p in (d / "chunks").iterdir()),
            "manifest": json.loads((d / "manifest.json").read_text())}


def test_two_processes_give_the_same_result(tmp_path):
    pytest.importorskip("accelerate")
    one = analysis(tmp_path / "one", [sys.executable])
    two = analysis(tmp_path / "two", TWO)
    assert len(two["chunks"]) == 2 and two["chunks"] == one["chunks"]
    assert two["result"] == one["result"] and two["requests"] == one["requests"]
    assert two["manifest"]["device"] == "cpu"


def test_retrieval_heads_and_knockout_split_by_tool_order(tmp_path):
    """Phase 1 and Phase 2 split their tool orders between two processes; the results are those of one."""
    pytest.importorskip("accelerate")
    for name in ("retrieval_heads", "head_knockout"):
        one = analysis(tmp_path / "one", [sys.executable], name)
        two = analysis(tmp_path / "two", TWO, name)
        orders = [c for c in two["chunks"] if c.startswith("order-")]
        assert len(orders) >= (2 if name == "retrieval_heads" else 1) and two["chunks"] == one["chunks"]
        assert two["result"] == one["result"], name


def test_circuit_zones_split_by_layer(tmp_path):
    """The circuit zones split their ablated and patched layers between two processes."""
    pytest.importorskip("accelerate")
    one = analysis(tmp_path / "one", [sys.executable], "circuit_zones")
    two = analysis(tmp_path / "two", TWO, "circuit_zones")
    layers = [c for c in two["chunks"] if c.startswith(("ablation-", "patching-"))]
    assert len(layers) >= 4 and two["chunks"] == one["chunks"]
    assert two["result"] == one["result"]


def test_share_is_contiguous_and_complete(monkeypatch):
    from toolattn import parallel

    names = [f"chunk-{i:04d}" for i in range(5)]
    assert parallel.my_share(names) == names  # one process: everything
    parts = []
    for rank in range(2):
        class State:
            process_index, num_processes = rank, 2

            def split_between_processes(self, items):
                from accelerate import PartialState  # noqa: F401  (the real one needs a process group)
                import contextlib
                k = -(-len(items) // 2)
                return contextlib.nullcontext(items[rank * k : (rank + 1) * k])

        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setattr("accelerate.PartialState", State)
        parts.append(parallel.my_share(names))
    assert parts[0] + parts[1] == names and parts[0] and parts[1]
