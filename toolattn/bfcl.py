"""The Berkeley Function Calling Leaderboard (BFCL) requests as our ``Tool`` lists and requests.

The data ships in the PyPI wheel ``bfcl-eval`` (Apache-2.0). The package itself is not a
dependency (it pins old libraries and many API clients): ``ensure_data`` downloads the pinned
wheel with pip, checks its sha256 and extracts only the JSON files used here into
``paths.cache_dir() / "bfcl" / VERSION``. Offline, the wheel file can be placed in that folder.

Three subsets are read: ``multiple`` and ``live_multiple`` (one user request, several declared
functions, one gold call) and ``live_irrelevance`` (no declared function applies). A request
is kept only when it has the shape of our synthetic requests (one user message, a list of
functions, one gold function); every other request is excluded under a named reason.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .artifacts import atomic_write
from .tools import Tool

VERSION = "2026.3.23"
WHEEL_NAME = f"bfcl_eval-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a"
SUBSETS = ("multiple", "live_multiple", "live_irrelevance")
NO_GOLD_SUBSETS = ("live_irrelevance",)  # no declared function applies: there is no gold call
MEMBER_ROOT = "bfcl_eval/data/"
# The files used, relative to the wheel's data folder (and to the extracted folder).
FILES = (
    "BFCL_v4_multiple.json",
    "BFCL_v4_live_multiple.json",
    "BFCL_v4_live_irrelevance.json",
    "possible_answer/BFCL_v4_multiple.json",
    "possible_answer/BFCL_v4_live_multiple.json",
)
SOURCE_FILE = "source.json"  # written last: a folder without it is unfinished

# Why a request is left out, in the order the checks run.
REASONS = (
    "not a single user message",
    "no function declared",
    "function does not parse",
    "duplicate function name",
    "no gold answer",
    "gold not among the functions",
    "unknown parameter type",
)

# BFCL's Python-style type names and their JSON Schema types; "any" drops the type (any JSON value).
TYPE_MAP = {"dict": "object", "float": "number", "tuple": "array", "list": "array",
            "str": "string", "int": "integer", "bool": "boolean"}
JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}

# Bins of the number of declared functions for stratified sampling.
BINS = ((1, 1, "1"), (2, 2, "2"), (3, 3, "3"), (4, 4, "4"), (5, 9, "5-9"), (10, None, "10+"))


# -- the data files ------------------------------------------------------------------------------

def data_dir() -> Path:
    """Where the extracted BFCL files of ``VERSION`` live."""
    return paths.cache_dir() / "bfcl" / VERSION


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds every file of ``FILES`` as recorded in its ``source.json``
    (written last by ``ensure_data``), extracted from the pinned wheel."""
    folder = Path(folder)
    try:
        source = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
        if source.get("wheel_sha256") != WHEEL_SHA256 or set(source.get("files", {})) != set(FILES):
            return False
        return all(_sha256(folder / name) == source["files"][name] for name in FILES)
    except (OSError, ValueError, AttributeError):
        return False


def ensure_data(folder: Path | None = None) -> Path:
    """The folder of extracted BFCL files (default ``data_dir()``), extracted first if needed.

    A wheel file ``WHEEL_NAME`` placed in the folder is used as it is (offline use); otherwise
    pip downloads the pinned wheel into a temporary folder next to it, which is removed after.
    The wheel's sha256 must be ``WHEEL_SHA256``. The JSON files are written atomically and
    ``source.json`` last, so an interrupted extraction never looks complete.
    """
    folder = Path(folder) if folder is not None else data_dir()
    if is_complete(folder):
        return folder
    placed = folder / WHEEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SOURCE_FILE).unlink(missing_ok=True)  # the folder is unfinished from here on
    if placed.is_file():
        _extract(placed, folder, placed)
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.download-", dir=folder.parent))
    try:
        _extract(_download(tmp, placed), folder, placed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _download(into: Path, placed: Path) -> Path:
    """The pinned wheel, downloaded with pip into ``into``; one-line ``OSError`` when that fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", f"bfcl-eval=={VERSION}", "-d", str(into)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        failed = done.returncode != 0
        detail = next((line.strip() for line in reversed(done.stderr.splitlines()) if line.strip()), "")
    except OSError as e:
        failed, detail = True, str(e)
    wheel = into / WHEEL_NAME
    if failed or not wheel.is_file():
        why = f": {detail}" if detail else ""
        raise OSError(f"PyPI could not be reached for bfcl-eval=={VERSION} (pip download failed{why}); "
                      f"to work offline, place the file {WHEEL_NAME} at {placed} and rerun")
    return wheel


def _extract(wheel: Path, folder: Path, placed: Path) -> None:
    """Check the wheel's sha256, then write ``FILES`` into ``folder`` and ``source.json`` last."""
    got = _sha256(wheel)
    if got != WHEEL_SHA256:
        fix = (f"delete it and rerun to download the wheel again, or place the wheel of bfcl-eval=={VERSION} "
               f"from PyPI at {placed}")
        raise ValueError(f"{wheel}: sha256 is {got}, expected {WHEEL_SHA256} (bfcl-eval=={VERSION}); {fix}")
    files = {}
    try:
        with zipfile.ZipFile(wheel) as z:
            for name in FILES:
                try:
                    data = z.read(MEMBER_ROOT + name)
                except KeyError:
                    raise ValueError(f"{wheel}: {MEMBER_ROOT + name} is missing from the wheel; place the wheel "
                                     f"of bfcl-eval=={VERSION} from PyPI at {placed}") from None
                atomic_write(folder / name, data)
                files[name] = hashlib.sha256(data).hexdigest()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{wheel}: not a zip file ({e}); place the wheel of bfcl-eval=={VERSION} "
                         f"at {placed}") from None
    source = {"package": "bfcl-eval", "version": VERSION, "license": "Apache-2.0", "wheel": WHEEL_NAME,
              "wheel_sha256": WHEEL_SHA256, "files": files}
    atomic_write(folder / SOURCE_FILE, json.dumps(source, indent=1) + "\n")


# -- functions as tools --------------------------------------------------------------------------

def to_schema(params: dict, unknown: list[str] | None = None) -> dict:
    """BFCL's parameter spec as JSON Schema (a new dict; key order kept).

    Python-style type names become JSON types (``dict`` -> ``object``, ``float`` -> ``number``,
    ``tuple``/``list`` -> ``array``, ``str``/``int``/``bool``), ``any`` drops the ``type`` key (any
    JSON value), recursively through ``properties``, ``items`` and ``additionalProperties``. JSON
    types stay as they are; every other key (``description``, ``enum``, ``default``, ``required``,
    ...) is copied unchanged. An unknown type name is kept and appended to ``unknown``.
    """
    unknown = [] if unknown is None else unknown
    return _convert(params, unknown)


def _convert_type(t, unknown: list[str]):
    """The JSON type for a BFCL type (None: drop the key)."""
    if isinstance(t, list):
        out = [_convert_type(x, unknown) for x in t]
        return None if None in out else out
    if not isinstance(t, str):
        unknown.append(repr(t))
        return t
    if t in JSON_TYPES:
        return t
    if t == "any":
        return None
    if t in TYPE_MAP:
        return TYPE_MAP[t]
    unknown.append(t)
    return t


def _convert(node, unknown: list[str]):
    if isinstance(node, list):
        return [_convert(x, unknown) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "type":
            t = _convert_type(value, unknown)
            if t is not None:
                out[key] = t
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _convert(sub, unknown) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, (dict, list)):
            out[key] = _convert(value, unknown)
        else:
            out[key] = json.loads(json.dumps(value))  # a deep copy of plain JSON data
    return out


def to_tool(fn: dict) -> tuple[Tool, list[str]]:
    """One BFCL function as a ``Tool`` (``core=False``, ``group="bfcl"``) and the unknown type names
    found in its parameters. ``ValueError`` when the function does not parse: no name or
    description (missing or empty), or parameters that are not an object."""
    if not isinstance(fn, dict):
        raise ValueError("the function is not an object")
    for key in ("name", "description"):
        if not isinstance(fn.get(key), str) or not fn[key].strip():
            raise ValueError(f"the function's {key!r} is missing or empty")
    if not isinstance(fn.get("parameters"), dict):
        raise ValueError(f"the parameters of {fn['name']!r} are not an object")
    unknown: list[str] = []
    schema = to_schema(fn["parameters"], unknown)
    return Tool(name=fn["name"], description=fn["description"], parameters=schema, core=False, group="bfcl"), unknown


# -- requests ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BfclRequest:
    """One BFCL request: the user's text, the declared tools (file order) and the gold function's
    name (None for the irrelevance subset, where no declared function applies)."""

    id: str
    subset: str
    text: str
    tools: tuple[Tool, ...]
    gold: str | None


@dataclass
class BfclSet:
    """The usable requests of one subset and, by reason, the ids of those left out."""

    subset: str
    requests: list[BfclRequest]
    n_raw: int
    excluded: dict[str, list[str]]

    def counts(self) -> dict[str, int]:
        """``raw`` and ``kept`` request counts and the number excluded for every reason of ``REASONS``."""
        out = {"raw": self.n_raw, "kept": len(self.requests)}
        out.update({reason: len(self.excluded.get(reason, [])) for reason in REASONS})
        return out


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a JSON-lines file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; run toolattn.bfcl.ensure_data() or pass the folder "
                                "that holds the extracted BFCL files")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i} is not JSON ({e}); expected one JSON object per line "
                                 "(delete the folder to extract it again)") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {i} is not a JSON object; expected one JSON object per line")
            if not isinstance(obj.get("id"), str):
                raise ValueError(f"{path}: line {i} has no string 'id'")
            rows.append((i, obj))
    seen: dict[str, int] = {}
    for i, obj in rows:
        if obj["id"] in seen:
            raise ValueError(f"{path}: line {i}: id {obj['id']!r} repeats line {seen[obj['id']]}")
        seen[obj["id"]] = i
    return rows


def _user_text(question) -> str | None:
    """The text when the conversation is exactly one user message (with non-empty text), else None."""
    if not (isinstance(question, list) and len(question) == 1
            and isinstance(question[0], list) and len(question[0]) == 1):
        return None
    m = question[0][0]
    if not isinstance(m, dict) or m.get("role") != "user":
        return None
    text = m.get("content")
    return text if isinstance(text, str) and text.strip() else None


def _gold_name(truth) -> str | None:
    """The function name of a ground truth of exactly one call, else None."""
    if isinstance(truth, list) and len(truth) == 1 and isinstance(truth[0], dict) and len(truth[0]) == 1:
        name = next(iter(truth[0]))
        return name if isinstance(name, str) else None
    return None


def _check(row: dict, subset: str, gold: dict | None) -> tuple[str | None, BfclRequest | None]:
    """(reason, None) for a request left out, (None, request) for one kept."""
    text = _user_text(row.get("question"))
    if text is None:
        return REASONS[0], None
    fns = row.get("function")
    if fns is None or fns == []:
        return "no function declared", None
    if not isinstance(fns, list):
        return "function does not parse", None
    tools, unknown = [], []
    for fn in fns:
        try:
            tool, bad = to_tool(fn)
        except ValueError:
            return "function does not parse", None
        tools.append(tool)
        unknown += bad
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        return "duplicate function name", None
    name = None
    if gold is not None:
        name = _gold_name(gold.get(row["id"]))
        if name is None:
            return "no gold answer", None
        if name not in names:
            return "gold not among the functions", None
    if unknown:
        return "unknown parameter type", None
    return None, BfclRequest(row["id"], subset, text, tuple(tools), name)


def load(subset: str, folder: Path | None = None) -> BfclSet:
    """The requests of one subset of ``SUBSETS``, in file order, read from ``folder`` (default: the
    folder of ``ensure_data()``, extracted first if needed). Requests that do not fit the shape
    of our requests are listed under their reason in ``excluded``; none is dropped silently."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown BFCL subset {subset!r}; use one of {', '.join(SUBSETS)}")
    folder = ensure_data() if folder is None else Path(folder)
    rows = _read_jsonl(folder / f"BFCL_v4_{subset}.json")
    gold = None
    if subset not in NO_GOLD_SUBSETS:
        gold = {obj["id"]: obj.get("ground_truth") for _, obj in _read_jsonl(
            folder / "possible_answer" / f"BFCL_v4_{subset}.json")}
    requests, excluded = [], {reason: [] for reason in REASONS}
    for _, row in rows:
        reason, request = _check(row, subset, gold)
        if reason is None:
            requests.append(request)
        else:
            excluded[reason].append(row["id"])
    return BfclSet(subset, requests, len(rows), excluded)


# -- grouping and sampling -----------------------------------------------------------------------

def tools_key(tools) -> str:
    """A canonical JSON of a tool list (names, descriptions and parameters, in order). The key order
    inside the schemas is kept, since the chat template renders it: equal keys render equally."""
    return json.dumps([[t.name, t.description, t.parameters] for t in tools], ensure_ascii=False,
                      separators=(",", ":"))


def groups(requests: list[BfclRequest]) -> list[tuple[tuple[Tool, ...], list[BfclRequest]]]:
    """Requests grouped by identical tool list (one cached prompt prefix per group): groups in order
    of first appearance, requests in the given order. ``Tool`` hashes without its parameters, so
    the grouping keys on ``tools_key``."""
    out: dict[str, tuple[tuple[Tool, ...], list[BfclRequest]]] = {}
    for r in requests:
        out.setdefault(tools_key(r.tools), (r.tools, []))[1].append(r)
    return list(out.values())


def size_bin(n_tools: int) -> str:
    """The stratification bin of a number of declared functions: 1, 2, 3, 4, 5-9, 10+."""
    for lo, hi, label in BINS:
        if n_tools >= lo and (hi is None or n_tools <= hi):
            return label
    raise ValueError(f"a request declares {n_tools} functions; expected at least 1")


def stratified_sample(requests: list[BfclRequest], n: int, seed: int) -> list[BfclRequest]:
    """``n`` requests, deterministic in ``seed``, stratified by the number of declared functions.

    Each bin (``size_bin``) gets its share of ``n`` in proportion to its size (largest remainder;
    ties go to the earlier bin); within a bin a shuffle seeded by ``f"{seed}/{subset}/{bin}"``
    picks the requests. The result keeps the given order. ``n >= len(requests)`` returns them all;
    a smaller ``n`` is not necessarily a subset of a larger one.
    """
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    if n >= len(requests):
        return list(requests)
    subset = "+".join(dict.fromkeys(r.subset for r in requests))
    by_bin: dict[str, list[int]] = {label: [] for _, _, label in BINS}
    for i, r in enumerate(requests):
        by_bin[size_bin(len(r.tools))].append(i)
    total = len(requests)
    quota = {b: n * len(ix) // total for b, ix in by_bin.items()}
    rest = n - sum(quota.values())
    order = sorted(by_bin, key=lambda b: -((n * len(by_bin[b])) % total))  # stable: ties keep bin order
    for b in order[:rest]:
        quota[b] += 1
    picked = []
    for b, ix in by_bin.items():
        ix = list(ix)
        random.Random(f"{seed}/{subset}/{b}").shuffle(ix)
        picked += ix[: quota[b]]
    return [requests[i] for i in sorted(picked)]


if __name__ == "__main__":  # python -m toolattn.bfcl: fetch and check the data once (make's set-up)
    from .errors import cli_errors

    with cli_errors():
        where = ensure_data()
        for name in SUBSETS:
            counts = load(name, where).counts()
            print(f"[bfcl] {name}: {counts['kept']} of {counts['raw']} requests readable "
                  f"({', '.join(f'{k}: {v}' for k, v in counts.items() if k not in ('raw', 'kept') and v) or 'none excluded'})")
        print(where)
