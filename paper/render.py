"""Build the paper: sections.toml + templates + artifacts -> report.qmd -> HTML + PDF.

    python -m paper.render --profile fast [--strict] [--to html,pdf] [--build-dir DIR]

A section is rendered only when every artifact folder it requires is complete;
otherwise it prints one line naming the make target that produces it (with ``--strict``
or ``STRICT=1`` the build stops with that line instead). Output goes to
``paper/build/<profile>/`` (or ``$TOOLATTN_BUILD/<profile>/``): ``report.qmd``,
``figures/``, ``report.html`` (self-contained) and ``report.pdf``.

Rendering uses Quarto when it is installed (on PATH, or ``QUARTO_PATH``); otherwise the
pandoc shipped with pypandoc-binary writes the HTML, and pandoc -> Typst -> the ``typst``
package writes the PDF. The Markdown uses only what both paths print the same way: pipe
tables, plain images, captions and cross-references written out as text.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import jinja2

from toolattn import paths

from . import claims
from .context import Context, ReportError, show_path, write_atomic

HERE = Path(__file__).resolve().parent
SECTIONS_FILE = HERE / "sections.toml"
TEMPLATES = HERE / "templates"
ASSETS = ("style.css", "header.typ")  # copied next to report.qmd
FORMATS = ("html", "pdf")


# --- the section list ------------------------------------------------------------------

def load_paper(path: Path = SECTIONS_FILE) -> dict:
    """{"title": str, "sections": [section, ...]} with defaults filled in."""
    data = tomllib.loads(Path(path).read_text())
    sections = data.get("section", [])
    for s in sections:
        if "id" not in s or "title" not in s:
            raise ReportError(f"{path}: every [[section]] needs an id and a title")
        s.setdefault("template", f"{s['id']}.md.j2")
        s.setdefault("requires", [])
        s.setdefault("numbered", True)
        if s["requires"] and "make_target" not in s:
            raise ReportError(f"{path}: section {s['id']!r} requires artifacts but names no make_target")
    return {"title": data.get("title", "Report"), "sections": sections}


def make_target(section: dict, profile: str) -> str:
    target = section.get("make_target", "")
    if isinstance(target, dict):
        target = target.get(profile) or target.get("default") or f"make {profile}"
    return target.format(profile=profile)


def heading(section: dict) -> str:
    attrs = f"#{section['id']}" + ("" if section["numbered"] else " .unnumbered")
    return f"# {section['title']} {{{attrs}}}\n\n"


# --- Markdown --------------------------------------------------------------------------

def render_section(env: jinja2.Environment, section: dict, ctx: Context, strict: bool) -> str:
    missing = [ctx.folder(r["model"], r["analysis"]) for r in section["requires"]
               if not ctx.has(r["model"], r["analysis"])]
    if missing:
        target = make_target(section, ctx.profile)
        if strict:
            folders = ", ".join(show_path(f) for f in missing)
            raise ReportError(f"section {section['id']!r} needs {folders} (result.json + manifest.json); "
                              f"run `{target}`")
        return heading(section) + f"_Not yet run: `{target}` produces this section._\n"
    try:
        body = env.get_template(section["template"]).render(ctx.namespace(section))
    except ReportError as e:
        raise ReportError(f"section {section['id']!r}: {e}") from None
    except jinja2.TemplateNotFound:
        raise ReportError(f"section {section['id']!r}: no template {TEMPLATES / section['template']}") from None
    except (jinja2.TemplateError, KeyError, TypeError, ValueError) as e:
        raise ReportError(f"section {section['id']!r} ({section['template']}): {type(e).__name__}: {e}") from None
    return heading(section) + body.strip() + "\n"


def front_matter(title: str, date: str) -> str:
    """YAML header; the format: block is read by Quarto, pandoc gets the same as flags."""
    return "\n".join([
        "---",
        f"title: {json.dumps(title)}",
        f"date: {json.dumps(date)}",
        "toc: true",
        "toc-depth: 2",
        "number-sections: true",
        "margin:",
        "  x: 2.2cm",
        "  y: 2.4cm",
        "format:",
        "  html:",
        "    embed-resources: true",
        "    css: style.css",
        "  typst:",
        "    fontsize: 10pt",
        "    include-in-header: header.typ",
        "---",
        "",
        "",
    ])


def render_markdown(paper: dict, ctx: Context, strict: bool) -> str:
    """Render every section twice: the first pass numbers figures and tables, the second
    resolves references to them (forward ones included)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.do"],
    )
    for final in (False, True):
        ctx.start_pass(final)
        parts = [render_section(env, s, ctx, strict) for s in paper["sections"]]
    return front_matter(paper["title"], ctx.date()) + "\n".join(parts)


# --- HTML and PDF ------------------------------------------------------------------------

def quarto_binary() -> str | None:
    exe = os.environ.get("QUARTO_PATH") or shutil.which("quarto")
    if exe and Path(exe).is_dir():
        exe = str(Path(exe) / "bin" / "quarto")
    return exe or None


def run(cmd: list[str], cwd: Path, what: str) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1]
        raise ReportError(f"{what} failed on {show_path(cwd / 'report.qmd')}: {last}")
    for line in r.stderr.strip().splitlines():  # warnings, e.g. a resource it could not embed
        print(f"report: {what}: {line}", file=sys.stderr)


def render_quarto(exe: str, build: Path, fmt: str) -> Path:
    """``quarto render`` into a scratch folder, then move the result into place."""
    to, name = {"html": ("html", "report.html"), "pdf": ("typst", "report.pdf")}[fmt]
    scratch = Path(tempfile.mkdtemp(dir=build, prefix=f".quarto-{fmt}-"))
    try:
        run([exe, "render", "report.qmd", "--to", to, "--output-dir", str(scratch)], build, "quarto")
        os.replace(scratch / name, build / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return build / name


def render_pandoc(build: Path, fmt: str) -> Path:
    """HTML: one self-contained file. PDF: pandoc -> report.typ -> typst."""
    import pypandoc

    pandoc = pypandoc.get_pandoc_path()
    common = ["report.qmd", "--from", "markdown", "--standalone", "--toc", "--toc-depth=2",
              "--number-sections", "--wrap=none",
              "--columns=10000"]  # tables: natural column widths, never pandoc's relative ones
    if fmt == "html":
        out = build / "report.html"
        part = f".{out.name}.part"
        run([pandoc, *common, "--to", "html5", "--embed-resources", "--css", "style.css",
             "--output", part], build, "pandoc (html)")
        os.replace(build / part, out)
        return out
    import typst

    typ, out = build / "report.typ", build / "report.pdf"
    part = f".{typ.name}.part"
    run([pandoc, *common, "--to", "typst", "--variable", "fontsize=10pt",
         "--include-in-header", "header.typ", "--output", part], build, "pandoc (typst)")
    os.replace(build / part, typ)
    try:
        pdf = typst.compile(str(typ), root=str(build))
    except Exception as e:  # typst raises its own error types
        raise ReportError(f"typst failed on {show_path(typ)}: {str(e).strip().splitlines()[0]}") from None
    write_atomic(out, pdf)
    return out


# --- the build -----------------------------------------------------------------------------

def default_build_dir(profile: str) -> Path:
    root = os.environ.get("TOOLATTN_BUILD")
    return Path(root) / profile if root else paths.report_build_dir(profile)


def build(profile: str = "fast", build_dir: Path | None = None, paper: dict | None = None,
          strict: bool | None = None, to=FORMATS, log=print) -> dict[str, Path]:
    """Write report.qmd (+ figures) and render it to each format in ``to``.

    ``build_dir`` defaults to ``$TOOLATTN_BUILD/<profile>`` or ``paper/build/<profile>``;
    ``strict`` defaults to the STRICT environment variable. Returns {"qmd"|"html"|"pdf": path}.
    """
    from toolattn.artifacts import load_profiles

    known = load_profiles()
    if profile not in known:
        raise ReportError(f"unknown profile {profile!r}; known profiles: {', '.join(known)} "
                          f"(defined in {show_path(paths.PROFILES_FILE)})")
    unknown = set(to) - set(FORMATS)
    if unknown:
        raise ReportError(f"unknown output format(s) {', '.join(sorted(unknown))}; use {', '.join(FORMATS)}")
    if strict is None:
        strict = os.environ.get("STRICT", "") not in ("", "0")
    build_dir = Path(build_dir) if build_dir else default_build_dir(profile)
    paper = paper or load_paper()
    claim_list, sources = claims.load()

    t0 = time.perf_counter()
    shutil.rmtree(build_dir / "figures", ignore_errors=True)  # only this build's figures
    ctx = Context(profile, build_dir, claim_list, sources)
    markdown = render_markdown(paper, ctx, strict)
    write_atomic(build_dir / "report.qmd", markdown)
    for asset in ASSETS:
        write_atomic(build_dir / asset, (HERE / asset).read_bytes())
    out = {"qmd": build_dir / "report.qmd"}
    log(f"report: wrote {show_path(out['qmd'])} in {time.perf_counter() - t0:.1f} s")

    quarto = quarto_binary()
    for fmt in to:
        t0 = time.perf_counter()
        if quarto:
            out[fmt], how = render_quarto(quarto, build_dir, fmt), "quarto"
        else:
            out[fmt] = render_pandoc(build_dir, fmt)
            how = "pandoc" if fmt == "html" else "pandoc -> typst"
        log(f"report: {fmt} via {how}: {show_path(out[fmt])} in {time.perf_counter() - t0:.1f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paper.render", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="fast", help="artifact profile (default: fast)")
    ap.add_argument("--strict", action="store_true",
                    help="fail when an artifact a section needs is missing (also STRICT=1)")
    ap.add_argument("--to", default="html,pdf", help="comma-separated formats; empty: report.qmd only")
    ap.add_argument("--build-dir", type=Path, help="output folder (default: paper/build/<profile>)")
    args = ap.parse_args(argv)
    try:
        build(args.profile, args.build_dir, strict=args.strict or None,
              to=[t for t in args.to.split(",") if t])
    except (ReportError, ValueError) as e:
        print(f"report: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
