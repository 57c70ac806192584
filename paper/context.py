"""What a section template sees: artifacts, number formatting, figure and table numbering.

Templates never type a number. They ask the context for it (``metric``, ``table``,
``manifest``) and format it with ``pct`` / ``num`` / ``ci``. Figures and tables are
emitted by ``figure`` / ``tbl``, which number them in document order and write the
number into the caption text ("**Figure 2.** ..."); no renderer numbers anything, so
every one prints the same thing. ``ref(label)`` gives "Figure 2" / "Table 3"; the document is rendered twice, so a
reference may point forward.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import tempfile
from pathlib import Path

from markupsafe import Markup

from toolattn import paths


class ReportError(RuntimeError):
    """The report cannot be built; the message says what is wrong and what to run."""


_REQUIRED = object()


# --- files ---------------------------------------------------------------------------

def complete(folder: Path) -> bool:
    """An artifact folder counts only once both its result and its manifest exist."""
    return (folder / "result.json").is_file() and (folder / "manifest.json").is_file()


def show_path(path: Path) -> str:
    """A path as a reader should see it: repo-relative when possible."""
    try:
        return str(Path(path).resolve().relative_to(paths.ROOT))
    except ValueError:
        return str(path)


def artifact_name(path: Path) -> str:
    """``artifacts/<profile>/<model>/<analysis>/<file>``, wherever the artifacts live."""
    try:
        return "artifacts/" + Path(path).relative_to(paths.artifacts_root()).as_posix()
    except ValueError:
        return show_path(path)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temp file in the same folder + rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o644)  # mkstemp makes files private; these are meant to be read
    os.replace(tmp, path)


# --- number formatting -----------------------------------------------------------------

def value(m):
    """The point value of a metric (``{"value", "lo", "hi", "n"}``) or the number itself."""
    return m["value"] if isinstance(m, dict) else m


def pct(m, lo=None, hi=None, digits=1) -> str:
    """0.912 -> "91.2%"; a metric with a CI (or value, lo, hi) -> "91.2% [85.0, 95.1]"."""
    if isinstance(m, dict):
        m, lo, hi = m["value"], m.get("lo"), m.get("hi")
    if m is None:
        return "n/a"
    text = f"{100 * float(m):.{digits}f}%"
    if lo is not None and hi is not None:
        text += f" [{100 * float(lo):.{digits}f}, {100 * float(hi):.{digits}f}]"
    return text


def ci(m, digits=None, as_pct=True) -> str:
    """The 95% interval of a metric: "[85.0, 95.1]" (percent) or "[0.81, 0.92]"."""
    scale = 100 if as_pct else 1
    digits = (1 if as_pct else 2) if digits is None else digits
    return f"[{scale * float(m['lo']):.{digits}f}, {scale * float(m['hi']):.{digits}f}]"


def num(m, digits=2) -> str:
    """Ints with thousands separators, floats to ``digits``, bools as yes/no, CI if any."""
    if isinstance(m, dict):
        text = num(m["value"], digits)
        if m.get("lo") is not None and m.get("hi") is not None:
            text += " " + ci(m, digits, as_pct=False)
        return text
    if m is None:
        return "n/a"
    if isinstance(m, bool):
        return "yes" if m else "no"
    if isinstance(m, int):
        return f"{m:,}"
    if isinstance(m, float):
        return f"{m:,.{digits}f}"
    return str(m)


def secs(x) -> str:
    if x is None or value(x) is None:
        return "n/a"
    x = float(value(x))
    return f"{x:.2f} s" if x < 100 else f"{x / 60:.1f} min"


def short(sha: str, n: int = 12) -> str:
    return str(sha)[:n]


_MD_SPECIAL = set("\\`*_[]<>$#|~^@{}")


def md_escape(text) -> str:
    """Plain text -> Markdown that prints exactly that text (no emphasis, math, citations)."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text).replace("\n", " "))


def md(text) -> Markup:
    """Mark text as Markdown that ``tbl`` must not escape."""
    return Markup(text)


def code(text) -> Markup:
    return Markup(f"`{text}`")


# --- tables from CSV ---------------------------------------------------------------------

class Rows(list):
    """CSV rows as dicts with numbers parsed; ``source`` is the file they came from."""

    source: Path | None = None


def _parse(text: str):
    """CSV text -> int / float / str. Padded text (" 1000", a model's reply) stays text."""
    if text != text.strip():
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _cell(v) -> str:
    if isinstance(v, Markup):
        return str(v).replace("\n", " ")
    text = md_escape(num(v) if isinstance(v, (int, float, bool)) or v is None else v)
    # pandoc's typst writer does not escape a cell that opens like a heading or list item
    return "\u200b" + text if text[:2] in ("= ", "+ ", "- ", "/ ") else text


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _clip(v, n: int | None):
    """Shorten long free text (model replies) to n characters."""
    if n and isinstance(v, str) and not isinstance(v, Markup):
        v = " ".join(v.split())
        return v if len(v) <= n else v[: n - 1].rstrip() + "…"
    return v


def pipe_table(rows: list[dict], columns: dict, clip: int | None = None) -> str:
    """A pipe table; numeric columns right-aligned; dashes follow the content width
    (pandoc reads them as relative widths only for tables wider than --columns)."""
    body = [[_cell(_clip(r.get(k, ""), clip)) for k in columns] for r in rows]
    head = [md_escape(h) for h in columns.values()]
    lines = ["| " + " | ".join(head) + " |"]
    rule = []
    for j, key in enumerate(columns):
        width = max(3, min(40, max(len(x[j]) for x in [head, *body])))
        right = rows and all(_is_number(r.get(key)) for r in rows)
        rule.append("-" * width + ":" if right else ":" + "-" * width)
    lines.append("|" + "|".join(rule) + "|")
    lines += ["| " + " | ".join(x) + " |" for x in body]
    return "\n".join(lines)


def flatten(config, prefix="") -> dict:
    """Nested config -> {"a.b": value}; long lists are summarised by their length."""
    out = {}
    for key, v in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        elif isinstance(v, list):
            simple = all(not isinstance(x, (dict, list)) for x in v)
            out[name] = ", ".join(map(str, v)) if simple and len(v) <= 6 else f"{len(v)} items"
        else:
            out[name] = "yes" if v is True else "no" if v is False else str(v)
    return out


# --- the context -------------------------------------------------------------------------

class Context:
    """Artifacts of one profile, plus the numbering state of the document being built."""

    def __init__(self, profile: str, build_dir: Path, claims: list[dict] | None = None,
                 sources: dict | None = None):
        self.profile = profile
        self.build_dir = Path(build_dir)
        self.claims_list = claims or []
        self.sources = sources or {}  # claim source file -> display title
        self._cache: dict = {}
        self._labels: dict[str, str] = {}  # label -> "Figure 2", from the previous pass
        self._seen: dict[str, str] = {}
        self._counts = {"Figure": 0, "Table": 0}
        self.final = False

    # numbering
    def start_pass(self, final: bool) -> None:
        self._labels, self._seen = self._seen, {}
        self._counts = {"Figure": 0, "Table": 0}
        self.final = final

    def _number(self, kind: str, label: str | None) -> int:
        self._counts[kind] += 1
        n = self._counts[kind]
        label = label or f"{kind.lower()}-{n}"
        if label in self._seen:
            raise ReportError(f"figure/table label {label!r} is used twice")
        self._seen[label] = f"{kind} {n}"
        return n

    def ref(self, label: str, default: str | None = None) -> str:
        """"Figure 2" / "Table 3" for a label given to ``figure``/``tbl``."""
        if label in self._labels:
            return self._labels[label]
        if default is not None:
            return default
        if self.final:
            raise ReportError(f"reference to unknown figure/table label {label!r}")
        return "??"

    # artifacts
    def folder(self, model: str, analysis: str) -> Path:
        return paths.artifact_dir(self.profile, model, analysis)

    def has(self, model: str, analysis: str) -> bool:
        return complete(self.folder(model, analysis))

    def _json(self, path: Path) -> dict:
        if path not in self._cache:
            try:
                self._cache[path] = json.loads(path.read_text())
            except FileNotFoundError:
                raise ReportError(f"missing {show_path(path)}") from None
            except json.JSONDecodeError as e:
                raise ReportError(f"{show_path(path)} is not valid JSON ({e})") from None
        return self._cache[path]

    def result(self, model: str, analysis: str) -> dict:
        return self._json(self.folder(model, analysis) / "result.json")

    def manifest(self, model: str, analysis: str) -> dict:
        return self._json(self.folder(model, analysis) / "manifest.json")

    def timing(self, model: str, analysis: str, name: str, default=_REQUIRED):
        """A wall-clock duration (seconds) the run recorded in its manifest's ``timings``."""
        timings = self.manifest(model, analysis).get("timings") or {}
        if name not in timings:
            if default is not _REQUIRED:
                return default
            where = show_path(self.folder(model, analysis) / "manifest.json")
            raise ReportError(f"timing {name!r} is not in {where}; rerun `make {self.profile}` to record it")
        return timings[name]

    def metric(self, model: str, analysis: str, name: str, default=_REQUIRED):
        """A metric of result.json; ``name`` may be a dotted path (``flip_rate.L11``)."""
        node = self.result(model, analysis).get("metrics", {})
        for key in name.split("."):
            if not isinstance(node, dict) or key not in node:
                if default is not _REQUIRED:
                    return default
                where = show_path(self.folder(model, analysis) / "result.json")
                raise ReportError(f"metric {name!r} is not in {where}")
            node = node[key]
        return node

    def table(self, model: str, analysis: str, name: str) -> Rows:
        files = self.result(model, analysis).get("tables", {})
        if name not in files:
            where = show_path(self.folder(model, analysis) / "result.json")
            raise ReportError(f"table {name!r} is not listed in {where}")
        path = self.folder(model, analysis) / files[name]
        if path not in self._cache:
            try:
                with path.open(newline="") as f:
                    rows = Rows({k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f))
            except FileNotFoundError:
                raise ReportError(f"missing table file {show_path(path)}") from None
            rows.source = path
            self._cache[path] = rows
        return self._cache[path]

    def models(self, analysis: str) -> list[str]:
        """Models with a complete folder for ``analysis`` in this profile."""
        root = paths.artifacts_root() / self.profile
        return sorted(p.parent.name for p in root.glob(f"*/{analysis}") if complete(p))

    def runs(self) -> list[dict]:
        """Every complete artifact folder of this profile, with its manifest."""
        root = paths.artifacts_root() / self.profile
        return [
            {"model": p.parent.name, "analysis": p.name, "manifest": self.manifest(p.parent.name, p.name)}
            for p in sorted(root.glob("*/*"))
            if complete(p)
        ]

    # provenance helpers
    def _index(self, field: str) -> list[dict]:
        """(key, value) pairs of a manifest field across runs, with the runs that share them."""
        seen: dict[tuple, list[str]] = {}
        runs = self.runs()
        for run in runs:
            for k, v in (run["manifest"].get(field) or {}).items():
                seen.setdefault((k, str(v)), []).append(f"{run['model']}/{run['analysis']}")
        return [
            {"name": k, "value": v, "used_by": "all runs" if len(by) == len(runs) > 1 else ", ".join(by)}
            for (k, v), by in sorted(seen.items())
        ]

    def inputs(self, kind: str | None = None) -> list[dict]:
        """Input files (sha256) of all runs; ``kind`` "data" (prompt sets, tool catalogs) or "model"."""
        rows = self._index("inputs")
        if kind is None:
            return rows
        is_data = lambda name: name.startswith("data/") or "/data/" in name or Path(name).suffix in (".json", ".csv")
        return [r for r in rows if is_data(r["name"]) == (kind == "data")]

    def versions(self) -> list[dict]:
        return self._index("versions")

    def config_rows(self, analysis: str) -> list[dict]:
        """One row per config setting of ``analysis``; one column per model."""
        configs = {m: flatten(self.manifest(m, analysis).get("config")) for m in self.models(analysis)}
        keys = sorted({k for c in configs.values() for k in c})
        return [{"Setting": code(k), **{m: c.get(k, "") for m, c in configs.items()}} for k in keys]

    def plan_sizes(self) -> list[dict]:
        """Each run's size against the reference plan's (``paper/plan.toml``), for the analyses of this profile:
        ``{analysis, model, what, plan, run, source, plan_halfwidth, run_halfwidth}`` (half-widths of the widest
        95% Wilson interval, at a proportion of one half, for counts of requests; else None)."""
        import tomllib

        from toolattn.stats import wilson

        def halfwidth(n):
            if not n:
                return None
            lo, hi = wilson(n // 2, n)
            return (hi - lo) / 2

        sizes = tomllib.loads((paths.PAPER / "plan.toml").read_text(encoding="utf-8"))["size"]
        rows = []
        for s in sizes:
            for m in self.models(s["analysis"]):
                if "metric" in s:
                    n = self.metric(m, s["analysis"], s["metric"], None)
                    n = n.get("n") if isinstance(n, dict) else n
                else:
                    n = (self.manifest(m, s["analysis"]).get("config") or {}).get(s["config"])
                    n = len(n) if isinstance(n, list) else n
                if n is None:
                    continue
                wide = s.get("requests", False)
                rows.append({"analysis": s["analysis"], "model": m, "what": s["what"], "plan": s["plan"], "run": n,
                             "source": s["source"], "plan_halfwidth": halfwidth(s["plan"]) if wide else None,
                             "run_halfwidth": halfwidth(n) if wide else None})
        return rows

    def date(self) -> str:
        """The newest manifest date, so an unchanged set of artifacts gives an unchanged paper."""
        dates = sorted(str(r["manifest"].get("created", ""))[:10] for r in self.runs())
        return dates[-1] if dates and dates[-1] else datetime.date.today().isoformat()

    # figures and tables
    def figure(self, model: str, analysis: str, name: str, label: str | None = None,
               width: str = "80%", caption: str | None = None) -> str:
        """Copy a figure of an artifact into the build and emit it with its number."""
        info = self.result(model, analysis).get("figures", {}).get(name)
        if info is None:
            raise ReportError(f"figure {name!r} is not listed in "
                              f"{show_path(self.folder(model, analysis) / 'result.json')}")
        src = self.folder(model, analysis) / info["file"]
        if not src.is_file():
            raise ReportError(f"missing figure file {show_path(src)}")
        dst = self.build_dir / "figures" / f"{model}--{analysis}--{Path(info['file']).name}"
        write_atomic(dst, src.read_bytes())
        n = self._number("Figure", label)
        text = caption if caption is not None else info.get("caption", "")
        text = " ".join(text.split()).replace("[", "\\[").replace("]", "\\]")  # inside ![...]
        return (f"![**Figure {n}.** {text} Model: `{model}`; source: `{artifact_name(src)}`.]"
                f"(figures/{dst.name}){{width={width}}}\n")

    def tbl(self, rows, caption: str, label: str | None = None, columns=None,
            limit: int | None = None, clip: int | None = None, source=None) -> str:
        """A numbered pipe table. ``rows``: list of dicts (e.g. from ``table``);
        ``columns``: keys to show, or {key: header}; ``limit``: at most this many rows;
        ``clip``: shorten text cells to this many characters; ``source``: the CSV (or its Rows)."""
        source = getattr(source, "source", source) or getattr(rows, "source", None)
        rows = list(rows)
        if columns is None:
            columns = list(rows[0]) if rows else []
        if not isinstance(columns, dict):
            columns = {c: c for c in columns}
        n = self._number("Table", label)
        shown = rows[:limit] if limit else rows
        text = [f"**Table {n}.**", " ".join(caption.split())]
        if len(shown) < len(rows):
            text.append(f"First {len(shown):,} of {len(rows):,} rows.")
        if source:
            text.append(f"Source: `{artifact_name(source)}`.")
        if not rows:
            return " ".join(text) + "\n\n_No rows._\n"
        # "Table: ..." after a pipe table is its caption (HTML <caption>, typst figure caption)
        return pipe_table(shown, columns, clip) + "\n\nTable: " + " ".join(text) + "\n"

    def namespace(self, section: dict) -> dict:
        """Everything a template may call."""
        from . import claims  # claims formats with this module's helpers

        return dict(
            profile=self.profile, section=section, requires=section.get("requires", []),
            has=self.has, result=self.result, manifest=self.manifest, metric=self.metric, timing=self.timing,
            table=self.table, models=self.models, runs=self.runs, inputs=self.inputs,
            versions=self.versions, config_rows=self.config_rows, plan_sizes=self.plan_sizes,
            figure=self.figure, tbl=self.tbl, ref=self.ref,
            pct=pct, num=num, ci=ci, secs=secs, short=short, code=code, md=md, value=value,
            claims=lambda: claims.evaluate(self, self.claims_list),
            claims_summary=lambda: claims.summary(claims.evaluate(self, self.claims_list)),
            claim_sources=lambda: {c["source"]: self.sources.get(c["source"], c["source"])
                                   for c in self.claims_list},
        )
