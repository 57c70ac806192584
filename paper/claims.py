"""The replication table: each quantitative claim of the reference documents, where our
measurement of it lives, the rule that compares the two, and the verdict.

Claims are listed in ``paper/claims.toml``. A verdict is one of ``replicates``,
``partly``, ``does not replicate`` or ``not yet measured`` (the analysis has not run on
this profile, or its result.json lacks the metric). Rule kinds:

* ``at_least`` / ``at_most`` (``threshold``, default: the reported value): replicates when
  the point estimate is on the right side; partly when only its 95% CI reaches it.
* ``close`` (``tol``): replicates when |measured - reported| <= tol; partly when the CI
  overlaps reported +- tol, or the point estimate is within 2 tol.
* ``same_layer`` (``layers``, default [reported]; ``tol``, default 1): replicates when the
  measured layer is one of ``layers``; partly when it is within ``tol`` layers of one.
* ``equal``: replicates when measured == reported (a neuron index, a dimension).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from toolattn import paths

from .context import ReportError, num, pct, value

CLAIMS_FILE = paths.PAPER / "claims.toml"
KINDS = ("at_least", "at_most", "close", "same_layer", "equal")
FIELDS = ("id", "claim", "source", "reported", "unit", "model", "analysis", "metric", "rule")
REPLICATES, PARTLY, DOES_NOT, NOT_YET = "replicates", "partly", "does not replicate", "not yet measured"
VERDICTS = (REPLICATES, PARTLY, DOES_NOT, NOT_YET)


def load(path: Path = CLAIMS_FILE) -> tuple[list[dict], dict]:
    """(claims, sources) from claims.toml; sources maps a file name to a display title."""
    data = tomllib.loads(Path(path).read_text())
    claims, ids = data.get("claim", []), set()
    for c in claims:
        lacking = [f for f in FIELDS if f not in c]
        if lacking:
            raise ReportError(f"{path}: claim {c.get('id', '?')!r} lacks {', '.join(lacking)}")
        if not isinstance(c["rule"], dict):
            c["rule"] = {"kind": c["rule"]}
        if c["rule"].get("kind") not in KINDS:
            raise ReportError(f"{path}: claim {c['id']!r} has rule kind {c['rule'].get('kind')!r}; "
                              f"use one of {', '.join(KINDS)}")
        if c["id"] in ids:
            raise ReportError(f"{path}: claim id {c['id']!r} appears twice")
        ids.add(c["id"])
    return claims, data.get("sources", {})


def verdict(rule: dict, reported: float, m) -> str:
    """Compare a measurement ``m`` (number or {value, lo, hi}) with the reported value."""
    if m is None:
        return NOT_YET
    v = float(value(m))
    lo, hi = (m.get("lo"), m.get("hi")) if isinstance(m, dict) else (None, None)
    kind = rule["kind"]
    if kind == "at_least":
        t = rule.get("threshold", reported)
        return REPLICATES if v >= t else PARTLY if hi is not None and hi >= t else DOES_NOT
    if kind == "at_most":
        t = rule.get("threshold", reported)
        return REPLICATES if v <= t else PARTLY if lo is not None and lo <= t else DOES_NOT
    if kind == "close":
        tol = rule["tol"]
        if abs(v - reported) <= tol:
            return REPLICATES
        overlaps = lo is not None and hi is not None and lo <= reported + tol and hi >= reported - tol
        return PARTLY if overlaps or abs(v - reported) <= 2 * tol else DOES_NOT
    if kind == "same_layer":
        gap = min(abs(v - layer) for layer in rule.get("layers", [reported]))
        return REPLICATES if gap == 0 else PARTLY if gap <= rule.get("tol", 1) else DOES_NOT
    if kind == "equal":
        return REPLICATES if v == reported else DOES_NOT
    raise ReportError(f"unknown rule kind {kind!r}")


def show(v, unit: str) -> str:
    """A reported value or threshold in the claim's unit: 0.967 -> "96.7%", 11 -> "L11"."""
    if unit == "fraction":
        return f"{round(100 * float(v), 1):g}%"
    if unit == "layer":
        return f"L{int(v)}"
    if unit == "neuron":
        return f"N{int(v)}"
    if unit == "dimension":
        return f"dim {int(v)}"
    return num(v, 1) if isinstance(v, float) else num(v)


def show_measured(m, unit: str) -> str:
    if m is None:
        return "–"
    if unit == "fraction":
        return pct(m)
    if unit in ("layer", "neuron", "dimension"):
        return show(value(m), unit)
    return num(m)


def criterion(rule: dict, reported, unit: str) -> str:
    kind = rule["kind"]
    if kind == "at_least":
        return "≥ " + show(rule.get("threshold", reported), unit)
    if kind == "at_most":
        return "≤ " + show(rule.get("threshold", reported), unit)
    if kind == "close":
        tol = rule["tol"]
        return f"± {round(100 * tol, 1):g} pp" if unit == "fraction" else f"± {show(tol, unit)}"
    if kind == "same_layer":
        return " or ".join(show(x, "layer") for x in rule.get("layers", [reported]))
    return "exactly " + show(reported, unit)


def measure(ctx, claim: dict):
    """Our measurement of a claim, or None if it is not (yet) in the artifacts.

    ``metric`` may be a list (e.g. one per layer of a zone): the worst case is taken,
    the largest value (``combine = "max"``, the default) or the smallest (``"min"``).
    """
    model, analysis = claim["model"], claim["analysis"]
    if not ctx.has(model, analysis):
        return None, ""
    names = claim["metric"] if isinstance(claim["metric"], list) else [claim["metric"]]
    found = [ctx.metric(model, analysis, name, None) for name in names]
    if any(m is None for m in found):
        return None, ""
    for name, m in zip(names, found):
        if isinstance(value(m), bool) or not isinstance(value(m), (int, float)):
            raise ReportError(f"claim {claim['id']!r}: metric {name!r} of {model}/{analysis} is not a number")
    if len(found) == 1:
        return found[0], ""
    pick = min if claim.get("combine", "max") == "min" else max
    i = pick(range(len(found)), key=lambda j: value(found[j]))
    return found[i], names[i].split(".")[-1]


def evaluate(ctx, claims: list[dict]) -> list[dict]:
    """One display row per claim: the claim's fields plus reported / rule / measured / verdict."""
    rows = []
    for c in claims:
        m, where = measure(ctx, c)
        measured = show_measured(m, c["unit"]) + (f" (at {where})" if where else "")
        rows.append({**c, "reported_text": show(c["reported"], c["unit"]),
                     "criterion": criterion(c["rule"], c["reported"], c["unit"]),
                     "measured": measured, "verdict": verdict(c["rule"], c["reported"], m)})
    return rows


def summary(rows: list[dict]) -> dict:
    """Counts per verdict: {"total", "replicates", "partly", "does_not", "not_yet"}."""
    count = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    return {"total": len(rows), "replicates": count[REPLICATES], "partly": count[PARTLY],
            "does_not": count[DOES_NOT], "not_yet": count[NOT_YET]}
