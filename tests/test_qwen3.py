"""Qwen3's chat format on the tiny Qwen3: thinking off by default; thinking on reasons first (greedy,
bounded) and the decision is read after </think>."""

import json

import pytest

from toolattn import paths
from toolattn.artifacts import Run
from toolattn.datasets import load_prompts, select
from toolattn.models import load_model
from toolattn.prompts import PromptFormatter
from toolattn.scoring import ToolChoiceEngine, naive_choice

REQUESTS = ["What's the weather in Paris today?", "hi", "Translate 'good night' into Spanish"]


@pytest.fixture(scope="module")
def qwen3():
    return load_model("tiny-qwen3")


def test_template_thinking_off_and_on(qwen3, tools):
    fm = PromptFormatter.for_model(qwen3)
    off, _ = fm.render(REQUESTS[0], tools)
    on, _ = fm.render(REQUESTS[0], tools, thinking=True)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and on.endswith("<|im_start|>assistant\n")
    assert off.startswith("<|im_start|>system\n# Tools\n\nYou may call one or more functions")
    assert "<tools>\n" + json.dumps(tools[0].schema(), ensure_ascii=False) in off
    assert qwen3.tokenizer.convert_tokens_to_ids("<think>") != qwen3.tokenizer.unk_token_id
    # reasoning of an earlier assistant turn is dropped; the last one's is kept
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>\nx\n</think>\n\nA"},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "B", "reasoning_content": "y"}]
    text = qwen3.tokenizer.apply_chat_template(msgs, tokenize=False)
    assert text == ("<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nb<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\ny\n</think>\n\nB<|im_end|>\n")


def test_thinking_then_decision_after_think(qwen3, tools):
    engine = ToolChoiceEngine(qwen3, batch_size=2, progress=False)
    thoughts = engine.think(REQUESTS, tools, max_new_tokens=6)
    for t in thoughts:
        assert t["after"].startswith("<think>") and t["after"].endswith("</think>\n\n") and 1 <= t["tokens"] <= 6
    after = [t["after"] for t in thoughts]
    got = engine.score(REQUESTS, tools, after=after)
    for r, a, g in zip(REQUESTS, after, got):
        f = engine.formatter.format(r, tools, a)
        assert f.text.endswith(a) and f.text[: -len(a)].endswith("<|im_start|>assistant\n")
        ref = naive_choice(qwen3, r, tools, after=a)
        assert all(abs(ref.logprobs[k] - g.logprobs[k]) < 1e-4 for k in ref.logprobs)
        assert abs(ref.p_tool - g.p_tool) < 1e-5
    # thinking off is unchanged by the option
    plain = engine.score(REQUESTS, tools)
    assert [c.logprobs for c in plain] == [c.logprobs for c in engine.score(REQUESTS, tools, after=None)]


def test_baseline_thinking_condition(qwen3, tools, tmp_path, monkeypatch):
    from analyses.baseline import thinking_condition

    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    reqs = select(load_prompts(), split="heldout", n_per_tool=1, n_no_tool=3, seed=0)[:6]
    engine = ToolChoiceEngine(qwen3, batch_size=4, progress=False)
    off = [{"id": r.id, "forced": c.choice, "decides_tool": c.decides_tool}
           for r, c in zip(reqs, engine.score([r.text for r in reqs], tools))]
    with Run("test", "tiny-qwen3", "baseline", {"thinking_max_new_tokens": 4}, {}) as run:
        m = thinking_condition(run, engine, reqs, tools, {"thinking_max_new_tokens": 4}, off)
        run.result(m)
    assert 0 <= m["forced_agreement_with_thinking_off"]["value"] <= 1 and m["mean_reasoning_tokens"] <= 4
    assert (paths.artifact_dir("test", "tiny-qwen3", "baseline") / "requests_thinking.csv").exists()
