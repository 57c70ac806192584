"""Versioned artifacts: ``artifacts/<profile>/<model>/<analysis>/``.

A finished folder holds ``result.json`` (key numbers, and the names of its tables and
figures), CSV tables, PNG figures and ``manifest.json`` (git sha + dirty flag, resolved config,
sha256 of every input, library versions, device, dtype, seed, wall time and the timings an
analysis recorded with ``Run.timing``). ``result.json`` holds no wall-clock numbers, so the same
inputs give a byte-identical ``result.json``. Every file is
written to a temporary name and renamed, and ``manifest.json`` is written last: a folder
without it is unfinished. Long analyses save finished chunks under ``chunks/`` and a re-run
resumes from them.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import time
import tomllib
from importlib import metadata
from pathlib import Path

from . import paths

LIBRARIES = ["torch", "transformers", "numpy", "scipy", "scikit-learn", "nnsight", "tokenizers", "matplotlib"]


def load_profiles() -> dict:
    """Every profile of ``toolattn/profiles.toml``."""
    try:
        return tomllib.loads(paths.PROFILES_FILE.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{paths.PROFILES_FILE}: not valid TOML ({e}); fix the file "
                         "(`git diff toolattn/profiles.toml` shows what changed)") from None


def load_profile(name: str) -> dict:
    """One profile from ``toolattn/profiles.toml`` (sizes, batch sizes, seeds)."""
    profiles = load_profiles()
    if name not in profiles:
        raise KeyError(f"unknown profile {name!r}; known profiles: {', '.join(profiles)} "
                       f"(defined in toolattn/{paths.PROFILES_FILE.name})")
    return profiles[name]


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written into it, so a read-only
    artifacts tree fails at once, before a model is loaded, instead of after the computation."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write to {folder} ({e.strerror or e}); make the artifacts folder writable "
                              f"(chmod -R u+w {paths.artifacts_root()}) or set TOOLATTN_ARTIFACTS to a writable folder"
                              ) from None


def atomic_write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def move_into_place(new: Path, folder: Path) -> None:
    """Rename the finished folder ``new`` to ``folder``, replacing what was there (the old one is moved
    aside first and removed after), so ``folder`` is never half-written."""
    old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write(path, buf.getvalue())


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip("."), dpi=150, bbox_inches="tight")
    atomic_write(path, buf.getvalue())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def git_state() -> tuple[str, bool]:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    return sha, dirty


def code_hash(analysis: str) -> str:
    """sha256 over the library sources and the analysis module."""
    h = hashlib.sha256()
    files = sorted((paths.ROOT / "toolattn").glob("*.py")) + [paths.ROOT / "analyses" / f"{analysis}.py"]
    for f in files:
        if f.exists():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def device_info() -> dict:
    """What the run's model ran on: ``device`` (e.g. ``cuda:0``), ``device_name``, ``dtype``, and the
    ``torch`` and ``cuda`` versions (``toolattn.device.ran``)."""
    from .device import ran

    return ran()


class Run:
    """One analysis run writing one artifact folder.

    >>> with Run("fast", "qwen2.5-coder-1.5b", "baseline", config, inputs) as run:
    ...     part = run.chunk("scores-0", lambda: compute())   # resumed if already saved
    ...     run.timing("scoring", seconds)                    # -> manifest.json "timings"
    ...     run.write_csv("per_tool", rows); run.result(metrics=...)

    Wall-clock numbers go through ``timing`` into ``manifest.json``, never into ``result.json``.
    """

    def __init__(self, profile: str, model: str, analysis: str, config: dict, inputs: dict[str, str],
                 seed: int = 0):
        self.dir = paths.artifact_dir(profile, model, analysis)
        self.profile, self.model, self.analysis = profile, model, analysis
        self.config, self.inputs, self.seed = config, dict(inputs), seed
        self.tables: dict[str, str] = {}
        self.figures: dict[str, dict] = {}
        self._result: dict | None = None
        self.timings: dict[str, float] = {}
        # Chunks are keyed by the config, the inputs and the code as the run starts: an edit made while it
        # runs neither splits its chunks between two keys nor is mistaken for the code that made them.
        # The precision and the kind of device are part of the key (not the GPU index: every process of
        # `accelerate launch` shares the chunks).
        from .device import resolve

        dev, dtype = resolve(model=model)
        precision = [dev.split(":")[0], str(dtype).removeprefix("torch.")]
        self.key = hashlib.sha256(json.dumps([self.config, self.inputs, code_hash(self.analysis), precision],
                                             sort_keys=True).encode()).hexdigest()[:12]

    def __enter__(self):
        self.t0 = time.time()
        ensure_writable(self.dir)
        stale = self.dir / "manifest.json"
        if stale.exists():  # a re-run: the folder is unfinished until the new manifest lands
            stale.unlink()
        return self

    def __exit__(self, exc_type, exc, tb):
        from .parallel import is_main

        if exc_type is None and not is_main():
            return False  # a helper process of `accelerate launch` only writes its chunks
        if exc_type is None:
            if self._result is None:
                raise RuntimeError(f"{self.analysis}: no result was written")
            write_json(self.dir / "result.json", self._result)
            sha, dirty = git_state()
            write_json(self.dir / "manifest.json", {
                "analysis": self.analysis, "model": self.model, "profile": self.profile,
                "git_sha": sha, "git_dirty": dirty, "config": self.config, "inputs": self.inputs,
                "versions": versions(), **device_info(), "seed": self.seed,
                "wall_time_s": round(time.time() - self.t0, 2), "timings": self.timings,
                "threads": _threads(),
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            })
        return False

    def chunk(self, name: str, compute):
        """Return a saved chunk, or compute it (a JSON-able object) and save it.

        Chunks are keyed by the config, the inputs and the code, so a changed analysis never
        resumes from stale parts.
        """
        path = self.chunk_path(name)
        if path.exists():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, OSError) as e:  # a damaged chunk is a cache miss, not a failure
                print(f"[toolattn] {path} is damaged ({type(e).__name__}); recomputing it", flush=True)
        try:
            value = compute()
        except Exception as e:  # name the input that failed; the finished chunks stay for a rerun
            e.add_note(f"[toolattn] while computing chunk {name!r} of {self.dir} (finished chunks are kept: "
                       "rerun the same command to resume)")
            raise
        write_json(path, value)
        return value

    def timing(self, name: str, seconds: float) -> float:
        """Record a wall-clock duration (seconds, summed over calls with the same name) in the
        manifest's ``timings``; returns the total so far. Timings never enter ``result.json``."""
        self.timings[name] = round(self.timings.get(name, 0.0) + float(seconds), 3)
        return self.timings[name]

    def chunk_path(self, name: str) -> Path:
        return self.dir / "chunks" / f"{name}.{self.key}.json"

    def chunks(self, names: list[str], compute) -> list | None:
        """Every chunk of ``names`` (``compute(name)`` makes one), split between the processes of
        ``accelerate launch``: each computes its share; the main process waits for the rest and gets
        them all, in order; a helper process gets None (and writes nothing more)."""
        from .parallel import is_main, my_share, wait_for, world

        for name in my_share(names):
            self.chunk(name, lambda name=name: compute(name))
        if not is_main():
            return None
        if world()[1] > 1:
            wait_for([self.chunk_path(n) for n in names])
        return [self.chunk(n, lambda n=n: compute(n)) for n in names]

    def write_csv(self, name: str, rows: list[dict]) -> None:
        write_csv(self.dir / f"{name}.csv", rows)
        self.tables[name] = f"{name}.csv"

    def save_figure(self, name: str, fig, caption: str) -> None:
        save_figure(fig, self.dir / f"{name}.png")
        self.figures[name] = {"file": f"{name}.png", "caption": caption}

    def result(self, metrics: dict, **extra) -> None:
        self._result = {"analysis": self.analysis, "model": self.model, "profile": self.profile,
                        "metrics": metrics, "tables": self.tables, "figures": self.figures, **extra}


def _threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def load_timings(profile: str, model: str, analysis: str) -> dict:
    """The ``timings`` recorded in a finished run's manifest (seconds by name)."""
    d = paths.artifact_dir(profile, model, analysis)
    if not (d / "manifest.json").exists():
        raise FileNotFoundError(f"no finished artifact at {d}; run `make {profile}`")
    return json.loads((d / "manifest.json").read_text()).get("timings", {})


def load_result(profile: str, model: str, analysis: str) -> dict:
    d = paths.artifact_dir(profile, model, analysis)
    if not (d / "manifest.json").exists():
        raise FileNotFoundError(f"no finished artifact at {d}; run `make {profile}`")
    return json.loads((d / "result.json").read_text())
