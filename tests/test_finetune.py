"""Fine-tuning the tool-calling child, on the tiny random Gemma3 model: data, loss mask, frozen
embeddings, learning, checkpoint round trip, resume."""

import pytest
import torch

from toolattn import finetune as ft
from toolattn.datasets import load_prompts
from toolattn.models import LoadedModel, load_model
from toolattn.parsing import opening, parse_call, reply_decided
from toolattn.prompts import PromptFormatter
from toolattn.scoring import ToolChoiceEngine
from toolattn.tools import core_tools, load_catalog

CFG = dict(train_examples=24, no_tool_share=0.25, min_tools=3, max_tools=12, epochs=1, train_batch_size=4,
           lr=1e-3, warmup_steps=1, grad_clip=1.0, seed=0, save_every=2)


@pytest.fixture(scope="module")
def setup():
    """A fresh tiny Gemma3, its child tokenizer, and encoded training examples."""
    lm = load_model("tiny-gemma3")
    tok = ft.child_tokenizer(lm.tokenizer)
    catalog = load_catalog()
    examples = ft.build_examples(load_prompts(), CFG["train_examples"], CFG["no_tool_share"], CFG["min_tools"],
                                 CFG["max_tools"], CFG["seed"], catalog)
    fm = PromptFormatter(tok, "chat", "gemma3")
    return lm, tok, examples, [ft.encode_example(fm, ex, catalog) for ex in examples]


def test_training_data_is_train_split_only():
    requests = load_prompts()
    heldout = {r.id for r in requests if r.split == "heldout"}
    examples = ft.build_examples(requests, 600, 0.3, 3, 12, seed=1)
    assert not heldout & {ex.request_id for ex in examples}
    assert {ex.gold for ex in examples} == {t.name for t in core_tools()} | {None}
    assert all(ex.gold in ex.tools for ex in examples if ex.gold)
    assert {len(ex.tools) for ex in examples} == set(range(3, 13))
    assert examples == ft.build_examples(requests, 600, 0.3, 3, 12, seed=1)  # deterministic


def test_call_format_parses():
    reply = ft.call_reply("get_weather")
    call = parse_call(reply + "<end_of_turn>")
    assert (call.kind, call.name, call.valid_json) == ("function_call", "get_weather", True)
    assert opening(reply) == "function_call" and parse_call(ft.no_tool_reply("x")).name is None
    assert not reply_decided("<start_function_call>get_wea") and reply_decided("<start_function_call>get_weather\n")
    assert not reply_decided("<start_fun")
    assert not parse_call("<start_function_call>get_weather\n{").valid_json  # truncated


def test_loss_on_reply_tokens_only(setup):
    lm, tok, examples, data = setup
    batch = data[:3]
    ids, attn, labels = ft.collate(batch, tok.pad_token_id)
    for b, (x, n_prompt) in enumerate(batch):
        assert (labels[b, :n_prompt] == ft.IGNORE).all() and (labels[b, len(x):] == ft.IGNORE).all()
        assert labels[b, n_prompt : len(x)].tolist() == x[n_prompt:]
        assert tok.decode(x[n_prompt:]) == examples[b].reply + ft.END_TURN
    # Same value as the cross-entropy of the full logits at the reply positions only.
    ids, attn, labels = (t.to(lm.model.device) for t in (ids, attn, labels))
    with torch.no_grad():
        loss = ft.reply_loss(lm.model, ids, attn, labels)
        logits = lm.model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    target = labels[:, 1:]
    keep = target != ft.IGNORE
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits[keep], target[keep]), atol=1e-5)


def test_training_freezes_embeddings_and_learns(setup):
    lm = load_model("tiny-gemma3")
    _, tok, _, data = setup
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    fixed = [t.to(lm.model.device) for t in ft.collate(data[:4], tok.pad_token_id)]
    with torch.no_grad():
        loss0 = ft.reply_loss(lm.model, *fixed).item()
    ft.train(lm.model, data[:4] * 8, dict(CFG, epochs=2, lr=3e-3), tok.pad_token_id, progress=False)  # 16 steps
    after = dict(lm.model.named_parameters())
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight  # tied head, frozen with it
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert "model.layers.0.mlp.down_proj.weight" in changed and "model.layers.3.self_attn.q_proj.weight" in changed
    with torch.no_grad():
        assert ft.reply_loss(lm.model, *fixed).item() < 0.8 * loss0


def test_checkpoint_round_trip(setup, tmp_path):
    lm = load_model("tiny-gemma3")
    _, tok, _, data = setup
    ft.train(lm.model, data[:8], CFG, tok.pad_token_id, progress=False)
    folder = tmp_path / "checkpoint"
    ft.save_checkpoint(lm.model, tok, folder, {"sha256": "abc", "key": "abc"})
    assert not list(tmp_path.glob("checkpoint.*"))  # no temporary folder left behind
    child = load_model("gemma-3-270m-tools", local_path=folder)
    assert child.files == {"gemma-3-270m-tools/model.safetensors": "abc"}
    for (n, p), q in zip(lm.model.state_dict().items(), child.model.state_dict().values()):
        assert torch.equal(p, q), n
    assert child.tokenizer.chat_template == tok.chat_template
    f = PromptFormatter(child.tokenizer, "chat", "gemma3").format("Is it raining in Oslo?", core_tools())
    assert f.text.endswith("<start_of_turn>model\n") and [s.name for s in f.tools] == [t.name for t in core_tools()]
    choices = ToolChoiceEngine(child, progress=False).score(["Is it raining in Oslo?"], core_tools())
    trained = LoadedModel(child.spec, lm.model, child.tokenizer, {})  # the in-memory weights, the child's format
    before = ToolChoiceEngine(trained, progress=False).score(["Is it raining in Oslo?"], core_tools())
    assert choices[0].logprobs == pytest.approx(before[0].logprobs, abs=1e-5)  # the saved child scores as trained
    assert choices[0].p_tool == pytest.approx(before[0].p_tool, abs=1e-6)


def test_resume_continues_at_saved_step(setup, tmp_path):
    _, tok, _, data = setup
    first = ft.train(load_model("tiny-gemma3").model, data, CFG, tok.pad_token_id, tmp_path, stop_at=3,
                     progress=False)  # interrupted after step 3; the last save was at step 2
    assert first["steps"] == 3 and (tmp_path / "state.pt").exists()
    resumed = load_model("tiny-gemma3")
    again = ft.train(resumed.model, data, CFG, tok.pad_token_id, tmp_path, progress=False)
    assert again["resumed_from"] == 2 and again["steps"] == again["total_steps"] == 6
    assert again["losses"][:2] == first["losses"][:2] and len(again["losses"]) == 6
    # An uninterrupted run ends with the same weights.
    straight = load_model("tiny-gemma3")
    ft.train(straight.model, data, CFG, tok.pad_token_id, progress=False)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_validation_part_is_a_stratified_share_of_the_train_split():
    requests = load_prompts()
    fitting, validation = ft.split_validation(requests, 0.2, seed=0)
    train = [r for r in requests if r.split == "train"]
    assert {r.id for r in fitting} | {r.id for r in validation} == {r.id for r in train}
    assert not {r.id for r in fitting} & {r.id for r in validation}
    for gold in {r.tool for r in train}:
        n = sum(r.tool == gold for r in train)
        assert sum(r.tool == gold for r in validation) == round(0.2 * n)
    assert ft.split_validation(requests, 0.2, seed=0) == (fitting, validation)  # deterministic
    assert ft.split_validation(requests, 0.2, seed=1)[1] != validation


def test_search_keeps_the_candidate_that_scores_best_on_validation(tmp_path, monkeypatch):
    """With a grid, every candidate is trained on the fitting part only and scored on the validation part;
    the saved child is the best one, and scoring the saved checkpoint again gives its recorded validation score."""
    monkeypatch.setenv("TOOLATTN_ARTIFACTS", str(tmp_path))
    cfg = dict(CFG, grid={"lr": [1e-3, 3e-2]}, validation_share=0.1, batch_size=8)
    del cfg["lr"]
    folder = ft.ensure_child("fast", cfg, progress=False, base="tiny-gemma3")
    source = ft.read_source(folder)
    search = source["selection"]
    assert [c["lr"] for c in search] == [1e-3, 3e-2] and sum(c["chosen"] for c in search) == 1
    best = max(search, key=lambda c: c["score"])
    assert best["chosen"] and source["config"]["lr"] == best["lr"]
    assert sorted(p.name for p in tmp_path.glob("fast/*/finetune/*")) == ["checkpoint"]  # candidates removed
    _, validation = ft.split_validation(load_prompts(), 0.1, seed=0)
    assert source["train_requests"] <= 470 - len(validation)
    assert source["validation_tool_requests"] + source["validation_no_tool_requests"] == len(validation)
    child = load_model("gemma-3-270m-tools", local_path=folder)
    again = ft.validation_scores(child, validation, batch_size=8)
    assert again["score"] == pytest.approx(best["score"], abs=1e-9)
    stamp = (folder / "source.json").stat().st_mtime_ns
    assert ft.ensure_child("fast", cfg, progress=False, base="tiny-gemma3") == folder  # reused, not retrained
    assert (folder / "source.json").stat().st_mtime_ns == stamp
