"""The paper renders from artifacts only: a synthetic artifact tree in, HTML + PDF out.

One render of a small tree (baseline for one model, a CSV per table, a real PNG) is shared
by the module; the other tests render Markdown only, so the file runs in seconds.
"""

from __future__ import annotations

import csv
import hashlib
import html as htmllib
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from paper import claims, render  # noqa: E402
from paper.context import Context, ReportError, num, pct  # noqa: E402

MODEL, OTHER = "qwen2.5-coder-1.5b", "gemma-3-270m"
TOOLS = ["get_weather", "send_email", "run_code", "translate_text"]
REQUESTS = [  # id, category, gold, forced, reply; replies with Markdown / Typst specials
    ("get_weather/001", "tool", "get_weather", "get_weather", "CALL get_weather"),
    ("send_email/002", "tool", "send_email", "get_calendar", "Tell @alice the *report* is late"),
    ("translate_text/003", "tool", "translate_text", "run_code", "Convert $20: `print(20*0.9)`"),
    ("none/factual/004", "factual", "", "get_weather", "Gravity pulls masses together."),
]


def metric(value, lo, hi, n):
    return {"value": value, "lo": lo, "hi": hi, "n": n}


def write_baseline(artifacts: Path, model: str = MODEL, profile: str = "fast") -> dict:
    """A complete baseline folder: result.json, manifest.json, two CSVs and a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = artifacts / profile / model / "baseline"
    folder.mkdir(parents=True)
    with open(folder / "per_tool.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tool", "n", "forced_acc", "forced_lo", "forced_hi", "gen_acc", "gen_lo", "gen_hi"])
        for i, tool in enumerate(TOOLS):
            w.writerow([tool, 20, 0.95 - 0.05 * i, 0.80 - 0.05 * i, 1.0, 0.9 - 0.1 * i, 0.7 - 0.1 * i, 0.99])
    with open(folder / "requests.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "category", "gold", "forced", "p_tool", "reply", "generated"])
        for rid, category, gold, forced, reply in REQUESTS:
            w.writerow([rid, category, gold, forced, 0.5, reply + "\n\n", forced if gold else ""])
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow([[9, 1, 0, 0], [0, 10, 0, 0], [0, 0, 10, 0], [0, 0, 2, 8]], cmap="Blues")
    ax.set(xticks=range(4), yticks=range(4), xticklabels=TOOLS, yticklabels=TOOLS)
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(folder / "confusion.png", dpi=60)
    plt.close(fig)
    result = {
        "analysis": "baseline", "model": model, "profile": profile,
        "metrics": {
            "forced_choice_accuracy": metric(0.9625, 0.9130, 0.9844, 80),
            "generation_accuracy": metric(0.8437, 0.7601, 0.9188, 80),
            "forced_generation_agreement": metric(0.8813, 0.8111, 0.9377, 80),
            "tool_no_tool_accuracy": metric(0.7714, 0.6857, 0.8500, 120),
            "p_tool_auc": metric(0.8342, 0.7711, 0.8890, 120),
            "n_tools": 4, "plan_threshold": 0.9, "plan_threshold_holds": True,
        },
        "tables": {"per_tool": "per_tool.csv", "requests": "requests.csv"},
        "figures": {"confusion": {"file": "confusion.png", "caption": "Confusion matrix of forced choice."}},
    }
    manifest = {
        "git_sha": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False,
        "config": {"profile": profile, "requests_per_tool": 20, "batch_size": 8, "tools": TOOLS},
        "inputs": {"data/prompts.json": hashlib.sha256(b"prompts").hexdigest(),
                   "data/tools.json": hashlib.sha256(b"tools").hexdigest(),
                   "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf": hashlib.sha256(b"weights").hexdigest()},
        "versions": {"torch": "2.5.1", "transformers": "5.23.0", "python": "3.11.7"},
        "device": "cpu", "dtype": "float32", "seed": 0, "wall_time_s": 123.4,
        "timings": {"scoring": 32.98, "scoring_per_request": 0.4123},
        "created": "2026-05-01T10:00:00+00:00",
    }
    (folder / "result.json").write_text(json.dumps(result))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return result


def one_model_paper() -> dict:
    """The real section list, narrowed to MODEL, plus a section whose analysis never ran."""
    paper = render.load_paper()
    kept = []
    for s in paper["sections"]:
        needed = [r for r in s["requires"] if r["model"] == MODEL]
        if s["requires"] and not needed:
            continue  # a section about other models only
        s["requires"] = needed
        kept.append(s)
    paper["sections"] = kept
    paper["sections"].insert(3, {"id": "knockout", "title": "Head knockout", "template": "knockout.md.j2",
                                 "numbered": True, "make_target": "make knockout PROFILE={profile}",
                                 "requires": [{"model": MODEL, "analysis": "knockout"}]})
    return paper


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLATTN_ARTIFACTS", str(tmp / "artifacts"))
        mp.setenv("TOOLATTN_BUILD", str(tmp / "build"))
        mp.delenv("STRICT", raising=False)
        result = write_baseline(tmp / "artifacts")
        out = render.build("fast", paper=one_model_paper(), log=lambda *a: None)
        yield SimpleNamespace(out=out, result=result, tmp=tmp, qmd=out["qmd"].read_text(),
                              html=htmllib.unescape(out["html"].read_text()))


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("TOOLATTN_BUILD", str(tmp_path / "build"))
    monkeypatch.delenv("STRICT", raising=False)
    write_baseline(tmp_path / "artifacts")
    return tmp_path


def rows_of(html: str) -> list[str]:
    return re.findall(r"<tr.*?</tr>", html, flags=re.S)


def row_with(html: str, text: str) -> str:
    hits = [r for r in rows_of(html) if text in r]
    assert hits, f"no table row contains {text!r}"
    return hits[0]


# --- the rendered document ---------------------------------------------------------------

def test_build_writes_into_the_overridden_build_dir(built):
    build = built.tmp / "build" / "fast"
    assert built.out["qmd"] == build / "report.qmd"
    assert {p.name for p in build.iterdir()} >= {"report.qmd", "report.html", "report.pdf", "figures"}
    assert (build / "figures" / f"{MODEL}--baseline--confusion.png").is_file()
    assert built.qmd.startswith("---\ntitle: ")


def test_html_prints_the_metrics_as_the_template_formats_them(built):
    m = built.result["metrics"]
    table = row_with(built.html, "Forced-choice accuracy")
    assert pct(m["forced_choice_accuracy"]) in table  # "91.2% [85.0, 95.1]"
    assert pct(m["generation_accuracy"]) in row_with(built.html, "Generation accuracy")
    assert pct(m["tool_no_tool_accuracy"]) in row_with(built.html, "Tool / no-tool accuracy")
    assert num(m["p_tool_auc"]) in row_with(built.html, "P(tool) AUC")
    assert num(0.4123) in row_with(built.html, "Seconds per request")  # from the manifest's timings
    assert "threshold <strong>holds</strong>" in built.html


def test_html_has_every_table_row(built):
    per_tool = list(csv.DictReader(open(built.tmp / "artifacts/fast" / MODEL / "baseline/per_tool.csv")))
    for r in per_tool:
        row = row_with(built.html, f"<code>{r['tool']}</code>")
        assert pct(float(r["forced_acc"]), float(r["forced_lo"]), float(r["forced_hi"])) in row
        assert pct(float(r["gen_acc"]), float(r["gen_lo"]), float(r["gen_hi"])) in row
    for rid, _, gold, forced, reply in REQUESTS:  # only misrouted tool requests are listed
        if gold and forced != gold:
            assert reply in row_with(built.html, rid)  # $, @, * and ` survive Markdown and HTML
        else:
            assert rid not in built.html
    assert row_with(built.html, "data/prompts.json")  # methods: prompt-set hashes
    assert row_with(built.html, "requests_per_tool")  # methods: profile config


def test_figure_is_embedded(built):
    assert "data:image/png;base64," in built.html
    assert 'src="figures/' not in built.html
    assert "Confusion matrix of forced choice." in built.html


def test_replication_table(built):
    fc = built.result["metrics"]["forced_choice_accuracy"]
    row = row_with(built.html, "Baseline tool-selection accuracy above 90% (forced choice)")
    assert pct(fc) in row and claims.REPLICATES in row and MODEL in row
    row = row_with(built.html, "(free generation)")  # 84.4%, its interval straddles 90%
    assert claims.INCONCLUSIVE in row
    row = row_with(built.html, "Flip rate when patching L11")
    assert claims.NOT_YET in row and "gemma-3-270m-tools" in row and "100%" in row


def test_figures_and_tables_are_numbered_in_order(built):
    for kind in ("Figure", "Table"):
        numbers = [int(n) for n in re.findall(rf"<strong>{kind} (\d+)\.</strong>", built.html)]
        assert numbers == list(range(1, len(numbers) + 1)), kind
        assert numbers, kind
        mentioned = {int(n) for n in re.findall(rf"\b{kind} (\d+)\b", built.html)}
        assert mentioned <= set(numbers), f"{kind} reference to a number that does not exist"
    assert "??" not in built.qmd
    # the abstract points forward to the baseline table: resolved by the second pass
    abstract = built.qmd.split("# Methods")[0]
    baseline_table = re.search(r"\*\*(Table \d+)\.\*\* Baseline of each model", built.qmd).group(1)
    assert f"({baseline_table})" in abstract


def test_missing_analysis_prints_the_make_target(built):
    line = "_Not yet run: `make knockout PROFILE=fast` produces this section._"
    assert line in built.qmd
    assert "Not yet run: <code>make knockout PROFILE=fast</code> produces this section." in built.html


def test_pdf_has_title_and_numbers(built):
    from pypdf import PdfReader

    reader = PdfReader(built.out["pdf"])
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    assert len(reader.pages) >= 2
    assert render.load_paper()["title"] in text
    assert pct(built.result["metrics"]["forced_choice_accuracy"]) in text
    assert "Figure 1." in text and "Table 1." in text


# --- missing artifacts -------------------------------------------------------------------

def test_real_sections_with_a_model_missing(artifacts):
    out = render.build("fast", to=(), log=lambda *a: None)
    qmd = out["qmd"].read_text()
    baseline = qmd.split("# Baseline")[1].split("\n# ")[0]
    assert "_Not yet run: `make fast` produces this section._" in baseline
    assert "## Prompt sets" in qmd  # sections that need nothing still render


def test_strict_fails_naming_the_folder_and_target(artifacts, monkeypatch):
    with pytest.raises(ReportError, match=r"gemma-3-270m/baseline.*make fast"):
        render.build("fast", strict=True, to=(), log=lambda *a: None)
    monkeypatch.setenv("STRICT", "1")
    with pytest.raises(ReportError, match=r"gemma-3-270m/baseline"):
        render.build("fast", to=(), log=lambda *a: None)
    assert not (artifacts / "build" / "fast" / "report.qmd").exists()  # nothing half-written


def test_cli_strict_prints_one_line(artifacts, capsys):
    assert render.main(["--profile", "fast", "--strict", "--to", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gemma-3-270m/baseline" in err and "make fast" in err


def test_quarto_is_used_when_quarto_path_is_set(artifacts, monkeypatch):
    """A stand-in quarto records its arguments and writes into --output-dir; the build
    must move each output into place and leave no scratch folder behind."""
    fake = artifacts / "quarto"
    fake.write_text(f"#!{sys.executable}\n"
                    "import pathlib, sys\n"
                    "a = sys.argv[1:]\n"
                    "assert a[:2] == ['render', 'report.qmd'], a\n"
                    "to, out = a[a.index('--to') + 1], pathlib.Path(a[a.index('--output-dir') + 1])\n"
                    "(out / ('report.html' if to == 'html' else 'report.pdf')).write_text('quarto ' + to)\n")
    fake.chmod(0o755)
    monkeypatch.setenv("QUARTO_PATH", str(fake))
    lines = []
    out = render.build("fast", to=("html", "pdf"), log=lines.append)
    assert out["html"].read_text() == "quarto html" and out["pdf"].read_text() == "quarto typst"
    assert any("via quarto" in line for line in lines)
    assert not list(out["qmd"].parent.glob(".quarto-*"))


# --- pieces --------------------------------------------------------------------------------

def test_references_resolve_forward_and_fail_when_unknown(tmp_path):
    ctx = Context("fast", tmp_path)
    ctx.start_pass(final=False)
    assert ctx.ref("tab:x") == "??"
    ctx.tbl([{"a": 1}], "first", label="tab:y")
    ctx.tbl([{"a": 2}], "second", label="tab:x")
    ctx.start_pass(final=True)
    assert ctx.ref("tab:x") == "Table 2" and ctx.ref("tab:y") == "Table 1"
    with pytest.raises(ReportError, match="tab:nope"):
        ctx.ref("tab:nope")


@pytest.mark.parametrize("rule, reported, measured, expected", [
    # a proportion: the whole interval decides
    ({"kind": "at_least", "threshold": 0.9}, 0.9, metric(0.95, 0.91, 0.98, 50), claims.REPLICATES),
    ({"kind": "at_least", "threshold": 0.9}, 0.9, metric(0.93, 0.88, 0.97, 50), claims.INCONCLUSIVE),
    ({"kind": "at_least", "threshold": 0.9}, 0.9, metric(0.60, 0.50, 0.70, 50), claims.DOES_NOT),
    ({"kind": "at_least", "threshold": 0.9, "strict": True}, 0.9, metric(1.0, 0.9, 1.0, 4), claims.INCONCLUSIVE),
    ({"kind": "at_least", "threshold": 0.9, "strict": True}, 0.9, metric(1.0, 0.91, 1.0, 40), claims.REPLICATES),
    ({"kind": "at_most", "threshold": 0.1}, 0.0, metric(0.02, 0.0, 0.08, 50), claims.REPLICATES),
    ({"kind": "close", "tol": 0.1}, 0.4, metric(0.38, 0.32, 0.45, 200), claims.REPLICATES),
    ({"kind": "close", "tol": 0.1}, 0.4, metric(0.33, 0.2, 0.45, 30), claims.INCONCLUSIVE),
    ({"kind": "close", "tol": 0.1}, 0.4, metric(0.15, 0.05, 0.25, 30), claims.DOES_NOT),
    # a "no effect" claim: a measured 0 replicates a claimed 0 only inside the margin ...
    ({"kind": "equivalent", "margin": 0.1}, 0.0, metric(0.0, -0.06, 0.07, 80), claims.REPLICATES),
    ({"kind": "equivalent", "margin": 0.1}, 0.0, metric(0.0, -0.09, 0.12, 40), claims.INCONCLUSIVE),
    # ... a 10-point drop is not "no effect", and a measured 0 does not replicate a claimed 10% drop
    ({"kind": "equivalent", "margin": 0.1}, 0.0, metric(0.10, 0.02, 0.21, 40), claims.INCONCLUSIVE),
    ({"kind": "equivalent", "margin": 0.1}, 0.0, metric(0.35, 0.2, 0.5, 40), claims.DOES_NOT),
    ({"kind": "close", "tol": 0.1}, 0.1, metric(0.0, -0.09, 0.09, 40), claims.INCONCLUSIVE),
    ({"kind": "close", "tol": 0.1}, 1.0, {"value": None, "lo": None, "hi": None, "n": 0}, claims.NO_PAIRS),
    # layers: every layer that cannot be told from the argmax must be a claimed one
    ({"kind": "same_layer", "layers": [11, 12]}, 11, 12, claims.REPLICATES),
    ({"kind": "same_layer", "layers": [5]}, 5, {"value": 5, "candidates": [3, 5]}, claims.INCONCLUSIVE),
    ({"kind": "same_layer", "layers": [5]}, 5, {"value": 3, "candidates": [3]}, claims.DOES_NOT),
    ({"kind": "same_layer", "layers": [5], "tol": 1}, 5, 4, claims.REPLICATES),
    ({"kind": "close", "tol": 0.1}, 0.86, None, claims.NOT_YET),
])
def test_verdicts(rule, reported, measured, expected):
    assert claims.verdict(rule, reported, measured) == expected


def test_indices_compare_only_on_the_reference_model():
    rule = {"kind": "equal"}
    assert claims.verdict(rule, 230, 230, "neuron", "gemma-3-270m-tools") == claims.NOT_COMPARABLE
    assert claims.verdict(rule, 230, 230, "neuron", claims.REFERENCE_MODEL) == claims.REPLICATES
    assert claims.verdict(rule, 230, 231, "neuron", claims.REFERENCE_MODEL) == claims.DOES_NOT


def test_zone_claims_need_every_layer():
    R, D, I, N = claims.REPLICATES, claims.DOES_NOT, claims.INCONCLUSIVE, claims.NO_PAIRS
    assert claims.combined([R, R]) == R and claims.combined([R, I]) == I and claims.combined([R, D, I]) == D
    assert claims.combined([N, N]) == N and claims.combined([R, N]) == I


def test_every_profile_casts_every_role():
    for profile in ("fast", "full", "hub"):
        assert set(claims.roles(profile)) == set(claims.ROLES)
    assert claims.roles("hub")["circuit model"] == claims.REFERENCE_MODEL


def test_claims_file_covers_the_reference_numbers():
    items, sources = claims.load()
    by_id = {c["id"]: c for c in items}
    expected = {"baseline_forced": 0.9, "probe_embed": 0.86, "probe_L1": 1.0, "probe_L0": 0.967,
                "mlp_drop_L0": 0.4, "mlp_drop_L1": 0.3, "mlp_drop_L3": 0.4, "mlp_drop_L5": 0.5,
                "mlp_drop_stable_zone": 0.0, "flip_L11": 1.0, "flip_L12": 0.68, "flip_L10": 0.0,
                "pc1_variance_L11": 0.86, "steering_force_tool": 0.937, "kill_switch_drop": 0.7,
                "essential_heads": 0.1}
    for cid, reported in expected.items():
        assert by_id[cid]["reported"] == pytest.approx(reported), cid
    assert {c["source"] for c in items} == set(sources) == {"tool_selection_plan.md", "functiongemma_circuit.md",
                                                                    "attention_tool_selection"}


def test_templates_type_no_numbers():
    """Numbers come from artifacts: outside Jinja tags and code spans, a template's prose
    holds no digits except the CI level, the reference model's name and "sha256"."""
    allowed = {"95%", "270M", "sha256", "float32", "PC1"}  # the CI level; model, format and component names
    for path in (render.TEMPLATES).glob("*.md.j2"):
        prose = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|`[^`]*`", " ", path.read_text(), flags=re.S)
        words = {w.strip(".,;:()") for w in prose.split() if re.search(r"\d", w)}
        assert words <= allowed, f"{path.name} types numbers: {sorted(words - allowed)}"


def test_plan_sizes_compare_a_run_with_the_plan(tmp_path, monkeypatch):
    """A run smaller than the plan is listed with both sizes and the widest Wilson half-width each buys."""
    from toolattn.stats import wilson

    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    folder = tmp_path / "full" / MODEL / "head_knockout"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"metrics": {"clean_accuracy": metric(0.96, 0.87, 0.99, 50)}}))
    (folder / "manifest.json").write_text(json.dumps({"config": {"n_random_sets": 20}}))
    rows = {r["what"]: r for r in Context("full", tmp_path / "build").plan_sizes()}
    assert set(rows) == {"requests per knockout condition", "random head sets (controls)"}  # no other analysis ran
    requests = rows["requests per knockout condition"]
    assert (requests["plan"], requests["run"], requests["model"]) == (500, 50, MODEL)
    lo, hi = wilson(25, 50)
    assert requests["run_halfwidth"] == pytest.approx((hi - lo) / 2) and requests["plan_halfwidth"] < (hi - lo) / 2
    assert rows["random head sets (controls)"]["run"] == 20 and rows["random head sets (controls)"]["run_halfwidth"] is None
