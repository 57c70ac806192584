"""Pinned key numbers of the `fast` profile.

These tests read finished artifacts (``artifacts/fast/<model>/<analysis>/result.json``) and
compare them with the values stored beside this file (``test_pins/*.csv``); they never
recompute anything. ``make check`` runs them alone; ``make test`` first builds any missing
fast artifacts.

To regenerate the pins after an intended change of method, data or model (never to make a
failing check pass): ``make fast && .venv/bin/python -m pytest tests/regression --force-regen``,
then review the diff of ``tests/regression/test_pins/`` and commit it with the reason.
"""

import pytest

from toolattn.artifacts import load_result

PROFILE = "fast"
TOLERANCE = dict(atol=1e-6, rtol=0)  # accuracies are ratios of counts; CIs use a seeded bootstrap
PINS = {
    "baseline": ["forced_choice_accuracy", "generation_accuracy", "forced_generation_agreement",
                 "tool_no_tool_accuracy", "generation_tool_no_tool_accuracy", "p_tool_auc"],
}
MODELS = {"baseline": ["qwen2.5-coder-1.5b", "gemma-3-270m"]}
CASES = [(m, a) for a, ms in MODELS.items() for m in ms]


def pinned_numbers(model: str, analysis: str) -> dict:
    try:
        result = load_result(PROFILE, model, analysis)
    except FileNotFoundError as e:
        pytest.fail(f"{e} (make test builds it; make check only compares)")
    out = {}
    for key in PINS[analysis]:
        m = result["metrics"][key]
        for field in ("value", "lo", "hi", "n"):
            out[f"{key}.{field}"] = [float(m[field])]
    return out


@pytest.mark.parametrize("model,analysis", CASES)
def test_pinned(model, analysis, num_regression):
    num_regression.check(pinned_numbers(model, analysis), basename=f"{PROFILE}_{model}_{analysis}",
                         default_tolerance=TOLERANCE)
