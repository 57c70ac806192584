"""The replication table: each quantitative claim of the reference documents, where our
measurement of it lives, the rule that compares the two, and the verdict.

Claims are listed in ``paper/claims.toml``. A claim names a *role* ("tool-selection model",
"circuit model", "circuit parent"); each profile says which model plays it (``[<profile>.roles]``
in ``toolattn/profiles.toml``), so the hub profile fills the same table with the paper's own models.

Verdicts come from intervals (a metric without one, such as a layer index of the weights, is exact):

* ``replicates`` -- the whole 95% interval satisfies the claim;
* ``does not replicate`` -- the whole interval contradicts it;
* ``inconclusive`` -- the interval straddles the boundary;
* ``no pairs`` -- a flip rate with no pair of requests decided differently;
* ``not comparable (different weights)`` -- a neuron or dimension index measured on another model
  than the reference's own (``REFERENCE_MODEL``);
* ``not yet measured`` -- the analysis has not run on this profile, or its result lacks the metric.

Rule kinds:

* ``at_least`` / ``at_most`` (``threshold``, default: the reported value; ``strict`` for ">"):
  replicates when the interval lies on the right side of the threshold, does not when it lies on
  the wrong side;
* ``close`` (``tol``): the interval inside reported +- tol replicates; disjoint from it does not;
* ``equivalent`` (``margin``): a "no effect" claim (a 0% drop, 0% flips); replicates only when the
  interval lies inside +- margin, does not when it lies beyond the margin;
* ``same_layer`` (``layers``, default [reported]; ``tol``, default 0): the measured layer and every
  layer that cannot be told from it (``candidates`` of the metric) within tol of a claimed layer
  replicate; none within tol does not;
* ``equal``: an index (neuron, dimension): equal or not, on the reference's own model only.

A claim over several metrics (a zone of layers) replicates when every one does, does not when any
one does not, and is inconclusive otherwise; the table shows its worst layer (``combine``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from toolattn import paths

from .context import ReportError, num, pct, value

CLAIMS_FILE = paths.PAPER / "claims.toml"
KINDS = ("at_least", "at_most", "close", "equivalent", "same_layer", "equal")
FIELDS = ("id", "claim", "source", "reported", "unit", "role", "analysis", "metric", "rule")
ROLES = ("tool-selection model", "circuit model", "circuit parent")
REFERENCE_MODEL = "functiongemma-270m"  # the model the circuit report measured
REPLICATES, DOES_NOT, INCONCLUSIVE = "replicates", "does not replicate", "inconclusive"
NO_PAIRS, NOT_COMPARABLE, NOT_YET = "no pairs", "not comparable (different weights)", "not yet measured"
VERDICTS = (REPLICATES, DOES_NOT, INCONCLUSIVE, NO_PAIRS, NOT_COMPARABLE, NOT_YET)
INDEX_UNITS = ("neuron", "dimension")


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
        if c["role"] not in ROLES:
            raise ReportError(f"{path}: claim {c['id']!r} has role {c['role']!r}; use one of {', '.join(ROLES)}")
        if c["id"] in ids:
            raise ReportError(f"{path}: claim id {c['id']!r} appears twice")
        ids.add(c["id"])
    return claims, data.get("sources", {})


def roles(profile: str) -> dict:
    """Role -> model name for a profile (``[<profile>.roles]`` of toolattn/profiles.toml)."""
    from toolattn.artifacts import load_profile

    try:
        found = load_profile(profile).get("roles", {})
    except KeyError as e:
        raise ReportError(e.args[0]) from None
    missing = [r for r in ROLES if r not in found]
    if missing:
        raise ReportError(f"profile {profile!r} names no model for the role(s) {', '.join(missing)}: "
                          f"add them to [{profile}.roles] in toolattn/profiles.toml")
    return found


def interval(m) -> tuple[float, float] | None:
    """``(lo, hi)`` of a metric; a plain number (an exact quantity) is its own interval; None: not measured."""
    if isinstance(m, dict):
        if m.get("value") is None:
            return None
        if m.get("lo") is None or m.get("hi") is None:
            return float(m["value"]), float(m["value"])
        return float(m["lo"]), float(m["hi"])
    return float(m), float(m)


def verdict(rule: dict, reported: float, m, unit: str = "fraction", model: str = "") -> str:
    """Compare a measurement ``m`` (number, {value, lo, hi, n} or {value, candidates}) with the claim."""
    if m is None:
        return NOT_YET
    if unit in INDEX_UNITS and model != REFERENCE_MODEL:
        return NOT_COMPARABLE
    kind = rule["kind"]
    if kind == "same_layer":
        claimed = rule.get("layers", [reported])
        cands = m.get("candidates", [m["value"]]) if isinstance(m, dict) else [m]
        near = [min(abs(c - x) for x in claimed) <= rule.get("tol", 0) for c in cands]
        return REPLICATES if all(near) else DOES_NOT if not any(near) else INCONCLUSIVE
    if kind == "equal":
        return REPLICATES if value(m) == reported else DOES_NOT
    span = interval(m)
    if span is None:
        return NO_PAIRS if isinstance(m, dict) and m.get("n") == 0 else NOT_YET
    lo, hi = span
    if kind == "at_least":
        t = rule.get("threshold", reported)
        if rule.get("strict"):
            return REPLICATES if lo > t else DOES_NOT if hi <= t else INCONCLUSIVE
        return REPLICATES if lo >= t else DOES_NOT if hi < t else INCONCLUSIVE
    if kind == "at_most":
        t = rule.get("threshold", reported)
        return REPLICATES if hi <= t else DOES_NOT if lo > t else INCONCLUSIVE
    if kind in ("close", "equivalent"):
        centre, tol = (reported, rule["tol"]) if kind == "close" else (0.0, rule["margin"])
        a, b = centre - tol, centre + tol
        return REPLICATES if a <= lo and hi <= b else DOES_NOT if hi < a or lo > b else INCONCLUSIVE
    raise ReportError(f"unknown rule kind {kind!r}")


def combined(verdicts: list[str]) -> str:
    """The verdict of a claim over several metrics (every layer of a zone)."""
    for v in (NOT_YET, NOT_COMPARABLE, DOES_NOT):
        if v in verdicts:
            return v
    if all(v == REPLICATES for v in verdicts):
        return REPLICATES
    if all(v == NO_PAIRS for v in verdicts):
        return NO_PAIRS
    return INCONCLUSIVE


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
        tied = [c for c in m.get("candidates", []) if c != value(m)] if isinstance(m, dict) else []
        return show(value(m), unit) + (" (tied: " + ", ".join(show(c, unit) for c in tied) + ")" if tied else "")
    return num(m)


def criterion(rule: dict, reported, unit: str) -> str:
    kind = rule["kind"]
    if kind == "at_least":
        return ("> " if rule.get("strict") else "≥ ") + show(rule.get("threshold", reported), unit)
    if kind == "at_most":
        return "≤ " + show(rule.get("threshold", reported), unit)
    if kind == "close":
        tol = rule["tol"]
        return f"± {round(100 * tol, 1):g} pp" if unit == "fraction" else f"± {show(tol, unit)}"
    if kind == "equivalent":
        margin = rule["margin"]
        return (f"within ± {round(100 * margin, 1):g} pp of 0" if unit == "fraction"
                else f"within ± {show(margin, unit)} of 0")
    if kind == "same_layer":
        tol = rule.get("tol", 0)
        return " or ".join(show(x, "layer") for x in rule.get("layers", [reported])) + (f" (± {tol})" if tol else "")
    return "exactly " + show(reported, unit)


def measure(ctx, claim: dict, model: str) -> list:
    """Our measurements of a claim on ``model``: one per metric name (None where missing)."""
    if not ctx.has(model, claim["analysis"]):
        return [None]
    names = claim["metric"] if isinstance(claim["metric"], list) else [claim["metric"]]
    found = [ctx.metric(model, claim["analysis"], name, None) for name in names]
    for name, m in zip(names, found):
        v = value(m) if m is not None else None
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ReportError(f"claim {claim['id']!r}: metric {name!r} of {model}/{claim['analysis']} is not a number")
    return found


def evaluate(ctx, claims: list[dict]) -> list[dict]:
    """One display row per claim: the claim's fields plus model / reported / rule / measured / verdict."""
    cast = roles(ctx.profile)
    rows = []
    for c in claims:
        model = cast[c["role"]]
        found = measure(ctx, c, model)
        names = c["metric"] if isinstance(c["metric"], list) else [c["metric"]]
        verdicts = [verdict(c["rule"], c["reported"], m, c["unit"], model) for m in found]
        v = combined(verdicts)
        shown = [(m, n) for m, n in zip(found, names) if m is not None and value(m) is not None]
        if shown:  # a zone shows its worst layer
            pick = min if c.get("combine", "max") == "min" else max
            m, name = pick(shown, key=lambda x: value(x[0]))
            measured = show_measured(m, c["unit"]) + (f" (at {name.split('.')[-1]})" if len(names) > 1 else "")
        else:
            measured = "–"
        rows.append({**c, "model": model, "reported_text": show(c["reported"], c["unit"]),
                     "criterion": criterion(c["rule"], c["reported"], c["unit"]), "measured": measured,
                     "verdict": v})
    return rows


def summary(rows: list[dict]) -> dict:
    """Counts per verdict: {"total", "replicates", "does_not", "inconclusive", "no_pairs", "not_comparable", "not_yet"}."""
    count = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    return {"total": len(rows), "replicates": count[REPLICATES], "does_not": count[DOES_NOT],
            "inconclusive": count[INCONCLUSIVE], "no_pairs": count[NO_PAIRS],
            "not_comparable": count[NOT_COMPARABLE], "not_yet": count[NOT_YET]}
