"""The FunctionGemma-style child ``gemma-3-270m-tools``, fine-tuned here from the Gemma 3 270M base.

Format (``templates/gemma3_tools.jinja``, saved with the checkpoint as the tokenizer's chat
template, so ``PromptFormatter`` formats the child's prompts with it)::

    <bos><start_of_turn>developer
    You can call these functions:
    get_weather: Get current weather for a location (location: string, units: string)
    ...                                             one line per tool, ~20 tokens
    <end_of_turn>
    <start_of_turn>user
    {request}<end_of_turn>
    <start_of_turn>model
    {reply}<end_of_turn>

A reply is either a call, ``<start_function_call>get_weather\\n{}<end_function_call>``, or a short
plain-text answer. ``<start_function_call>`` and ``<end_function_call>`` are single tokens: the base
vocabulary has no such tokens, so the child's tokenizer renames two image tokens this text-only
model never sees (``<start_of_image>``, ``<end_of_image>``); their embeddings are among the most
distinct of the vocabulary (the ``<unusedN>`` tokens are near-duplicates of each other), so a
frozen output embedding can still be picked out. The call prefix of the forced choice is
``<start_function_call>``, and the name is always followed by ``\\n`` (``CHAT_NAME_SUFFIX``).
Arguments are not filled in: every call carries ``{}``.

Data. Requests of the TRAIN split only. A tool request is paired with a tool list of 3..12
tools that holds its gold tool (``tool_list``: core tools for n <= 10, all core tools plus
near-neighbour catalog tools above), in a shuffled order; its reply is the call. A no-tool
request gets a random tool list and one of ``NO_TOOL_REPLIES`` (all open with "I", so the
first reply token is a two-way decision). Every train request is used once before any is
repeated. Deterministic in the seed.

Training. Full fine-tune of every non-embedding weight (the token embeddings are frozen, and
with them the tied output head); the loss is the cross-entropy of the reply tokens only;
batches of similar length, right-padded; AdamW (no weight decay), linear warm-up then linear
decay, gradient clipping. The run saves its trainable weights, optimizer and step every
``save_every`` steps to ``resume-<key>/`` beside the checkpoint, and resumes from there.

Hyperparameters (``[fast.finetune]``, ``[full.finetune]`` in ``profiles.toml``) are never tuned on
held-out requests. A profile with a ``grid`` (e.g. ``{lr = [1e-4, 3e-4]}``) chooses among its
candidates on a validation part of the train split: ``validation_share`` of each core tool's train
requests, and of the no-tool ones, are set aside (seeded); every candidate is trained on examples
built from the rest and scored on the validation requests (forced choice over the core tools, and
the tool / no-tool decision; the score is their mean, ties go to the earlier candidate); the best
one is the child. A profile without a grid trains its one configuration on the whole train split.

Checkpoint. ``tuned_checkpoint("gemma-3-270m-tools", profile)``: safetensors, the tokenizer
with the template, and ``source.json`` (``sha256``: hash of the training examples, the training
config, the format and the base model's sha256; ``key``: its first 16 characters; plus the
training curve). Written to a temporary folder and renamed; reused while the hash is unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .artifacts import move_into_place
from .datasets import Request, load_prompts
from .device import model_device
from .models import LoadedModel, get_spec, load_model, tuned_checkpoint
from .prompts import PromptFormatter
from .scoring import ToolChoiceEngine, decoder_parts
from .stats import proportion
from .tools import Tool, core_tools, load_catalog, tool_list

CHILD, BASE = "gemma-3-270m-tools", "gemma-3-270m"
FORMAT_VERSION = 1
TEMPLATE_FILE = Path(__file__).resolve().parent / "templates" / "gemma3_tools.jinja"
CALL_OPEN, CALL_CLOSE, END_TURN = "<start_function_call>", "<end_function_call>", "<end_of_turn>"
RENAMED = {"<start_of_image>": CALL_OPEN, "<end_of_image>": CALL_CLOSE}
NO_TOOL_REPLIES = (
    "I can answer this directly; no function call is needed.",
    "I will reply in plain text, since none of the functions is needed here.",
    "I do not need a function for this and will answer directly.",
    "I can help with this without calling a function.",
)
# The profile keys that change the trained weights (the rest only change the evaluation).
TRAIN_KEYS = ("train_examples", "no_tool_share", "min_tools", "max_tools", "epochs", "train_batch_size", "lr",
              "warmup_steps", "grad_clip", "seed")
SEARCH_KEYS = ("grid", "validation_share")  # the hyperparameter search, part of the key where a profile has one
IGNORE = -100  # label of tokens that carry no loss


# --- format -------------------------------------------------------------------------------------

def call_reply(name: str, arguments: dict | None = None) -> str:
    return f"{CALL_OPEN}{name}\n{json.dumps(arguments or {})}{CALL_CLOSE}"


def no_tool_reply(request_id: str) -> str:
    return NO_TOOL_REPLIES[int(hashlib.sha256(request_id.encode()).hexdigest(), 16) % len(NO_TOOL_REPLIES)]


def child_tokenizer(tokenizer):
    """A copy of ``tokenizer`` with the call markers (renamed image tokens, when it has them) and the
    child's chat template. Tokenizers without those tokens (the tiny test one) spell the markers out."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        path = Path(d) / "tokenizer.json"
        spec = json.loads(path.read_text(encoding="utf-8"))
        vocab = spec["model"].get("vocab")
        for added in spec.get("added_tokens", []):
            new = RENAMED.get(added["content"])
            if new:
                if isinstance(vocab, dict) and added["content"] in vocab:
                    vocab[new] = vocab.pop(added["content"])
                added["content"] = new
        path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = TEMPLATE_FILE.read_text(encoding="utf-8")
    return tok


# --- data ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    request_id: str
    request: str
    tools: tuple[str, ...]  # the declared tools, in prompt order
    gold: str | None
    reply: str


def _cycle(pool: list, n: int, rng: random.Random) -> list:
    """``n`` items: the whole pool in a random order, again and again."""
    out = []
    while len(out) < n and pool:
        order = list(pool)
        rng.shuffle(order)
        out += order
    return out[:n]


def build_examples(requests: list[Request], n: int, no_tool_share: float, min_tools: int, max_tools: int,
                   seed: int, catalog: list[Tool] | None = None) -> list[Example]:
    """``n`` training examples from the train split of ``requests`` (never the held-out split)."""
    catalog = load_catalog() if catalog is None else catalog
    train = [r for r in requests if r.split == "train"]
    rng = random.Random(seed)
    n_plain = round(n * no_tool_share)
    picks = _cycle([r for r in train if r.tool], n - n_plain, rng) + _cycle([r for r in train if not r.tool],
                                                                              n_plain, rng)
    out = []
    for r in picks:
        tools = tool_list(rng.randint(min_tools, max_tools), gold=r.tool, seed=rng.randrange(2**32), catalog=catalog)
        reply = call_reply(r.tool) if r.tool else no_tool_reply(r.id)
        out.append(Example(r.id, r.text, tuple(t.name for t in tools), r.tool, reply))
    rng.shuffle(out)
    return out


def split_validation(requests: list[Request], share: float, seed: int) -> tuple[list[Request], list[Request]]:
    """The train split's requests parted into ``(fitting, validation)``: ``share`` of each core tool's train
    requests, and of the no-tool ones, go to validation (seeded). Held-out requests are in neither."""
    train = [r for r in requests if r.split == "train"]
    rng = random.Random(seed * 7919 + 17)
    chosen = set()
    for gold in sorted({r.tool or "" for r in train}):
        ids = sorted(r.id for r in train if (r.tool or "") == gold)
        rng.shuffle(ids)
        chosen |= set(ids[: round(share * len(ids))])
    return [r for r in train if r.id not in chosen], [r for r in train if r.id in chosen]


def candidates(cfg: dict) -> list[dict]:
    """The training configurations to choose from: ``cfg`` with each combination of ``cfg["grid"]`` (in
    the grid's order, its keys sorted), or ``cfg`` itself when it has no grid."""
    grid = cfg.get("grid") or {}
    keys = sorted(grid)
    return [dict(cfg, **dict(zip(keys, values))) for values in itertools.product(*(grid[k] for k in keys))] or [cfg]


def validation_scores(lm: LoadedModel, requests: list[Request], batch_size: int = 16) -> dict:
    """A candidate on validation requests, the core tools declared: forced-choice accuracy on the tool
    requests, tool / no-tool accuracy on all, and ``score``, their mean (Wilson intervals)."""
    choices = ToolChoiceEngine(lm, batch_size=batch_size, progress=False).score([r.text for r in requests],
                                                                                core_tools())
    forced = proportion([c.choice == r.tool for c, r in zip(choices, requests) if r.tool])
    decided = proportion([c.decides_tool == bool(r.tool) for c, r in zip(choices, requests)])
    return {"forced_choice_accuracy": forced, "tool_no_tool_accuracy": decided,
            "score": (forced["value"] + decided["value"]) / 2}


def encode_example(formatter: PromptFormatter, ex: Example, catalog: list[Tool]) -> tuple[list[int], int]:
    """``(token ids of prompt + reply + end of turn, prompt length)``."""
    by_name = {t.name: t for t in catalog}
    text, _ = formatter.render(ex.request, [by_name[n] for n in ex.tools])
    ids, _ = formatter.encode(text)
    return ids + formatter.continuation_ids(ids, text, ex.reply + END_TURN), len(ids)


def collate(batch: list[tuple[list[int], int]], pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE`` on prompt and padding),
    each ``[batch, seq]``."""
    T = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    attention = torch.zeros(len(batch), T, dtype=torch.long)
    labels = torch.full((len(batch), T), IGNORE, dtype=torch.long)
    for b, (ids, n_prompt) in enumerate(batch):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        labels[b, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return input_ids, attention, labels


# --- training -----------------------------------------------------------------------------------

def reply_loss(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """Mean cross-entropy of the reply tokens. Logits are computed at reply positions only (the
    vocabulary has 262k entries, so full logits would dominate memory)."""
    decoder, head, softcap = decoder_parts(model)
    h = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = head(h[:, :-1][keep]).float()  # [reply tokens, vocab]
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, target[keep])


def freeze_embeddings(model) -> list[torch.nn.Parameter]:
    """Freeze the token embeddings (and so the tied output head); return the trainable parameters."""
    model.get_input_embeddings().weight.requires_grad_(False)
    model.get_output_embeddings().weight.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def batch_order(lengths: list[int], batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Batches of example indices for every epoch: shuffled, then sorted by length within groups of
    eight batches (less padding), then the batches shuffled."""
    rng = random.Random(seed)
    out = []
    for _ in range(epochs):
        idx = list(range(len(lengths)))
        rng.shuffle(idx)
        batches = []
        for g in range(0, len(idx), 8 * batch_size):
            group = sorted(idx[g : g + 8 * batch_size], key=lambda i: lengths[i])
            batches += [group[b : b + batch_size] for b in range(0, len(group), batch_size)]
        rng.shuffle(batches)
        out += batches
    return out


def train(model, data: list[tuple[list[int], int]], cfg: dict, pad_id: int, state_dir: Path | None = None,
          stop_at: int | None = None, progress: bool = True) -> dict:
    """Fine-tune ``model`` in place on encoded examples; resumable from ``state_dir``.

    ``cfg``: train_batch_size, epochs, lr, warmup_steps, grad_clip, seed, save_every.
    ``stop_at`` ends the run after that many steps (an interruption, for tests).
    Returns ``{"steps", "total_steps", "losses", "seconds", "resumed_from"}``.
    """
    torch.manual_seed(cfg["seed"])
    device = model_device(model)
    params = freeze_embeddings(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    order = batch_order([len(ids) for ids, _ in data], cfg["train_batch_size"], cfg["epochs"], cfg["seed"])
    total, warm = len(order), max(cfg["warmup_steps"], 1)
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    ramp = lambda s: min((s + 1) / warm, max(total - s, 1) / max(total - warm, 1))  # noqa: E731  warm-up, decay
    sched = torch.optim.lr_scheduler.LambdaLR(opt, ramp)
    step, losses, seconds = 0, [], 0.0
    state_file = Path(state_dir) / "state.pt" if state_dir else None
    if state_file and state_file.exists():
        st = torch.load(state_file, weights_only=True, map_location=device)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in st["weights"]:
                    p.copy_(st["weights"][n])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step, losses, seconds = st["step"], list(st["losses"]), st["seconds"]
    resumed_from = step
    model.train()
    bar = tqdm(total=total, initial=step, desc="fine-tuning", unit="step", disable=not progress)
    t0 = time.time()
    while step < total and (stop_at is None or step < stop_at):
        loss = reply_loss(model, *(t.to(device) for t in collate([data[i] for i in order[step]], pad_id)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        opt.step()
        sched.step()
        step += 1
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.update()
        if state_file and step % cfg["save_every"] == 0 and step < total:
            state = {"weights": {n: p.detach() for n, p in zip(names, params)}, "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "step": step, "losses": losses,
                     "seconds": seconds + time.time() - t0}
            state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = state_file.with_suffix(f".{os.getpid()}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, state_file)
    bar.close()
    model.eval()
    return {"steps": step, "total_steps": total, "losses": losses, "seconds": seconds + time.time() - t0,
            "resumed_from": resumed_from}


# --- checkpoint ---------------------------------------------------------------------------------

def training_key(examples: list[Example], cfg: dict, base_sha256: str) -> str:
    """sha256 of everything that determines the child's weights."""
    config = {k: cfg[k] for k in TRAIN_KEYS + SEARCH_KEYS if k in cfg}
    blob = json.dumps({"format": FORMAT_VERSION, "template": TEMPLATE_FILE.read_text(encoding="utf-8"),
                       "config": config, "examples": [asdict(e) for e in examples],
                       "base_sha256": base_sha256}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_source(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "source.json").read_text())
    except (OSError, ValueError):
        return {}


def save_checkpoint(model, tokenizer, folder: Path, source: dict) -> None:
    """Weights, tokenizer (with the chat template) and ``source.json``, written to a temporary folder
    and renamed into place."""
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "source.json").write_text(json.dumps(source, indent=1))
    move_into_place(tmp, folder)


def ensure_child(profile: str, cfg: dict, progress: bool = True, base: str = BASE) -> Path:
    """The child's checkpoint for ``profile``: reused when its key matches, else trained (resuming an
    interrupted run; with a ``grid``, every candidate, then the one that scores best on validation) and saved.
    ``base``: the registry model to tune (a tiny one in tests)."""
    folder = tuned_checkpoint(CHILD, profile)
    catalog = load_catalog()
    requests = load_prompts()
    runs = candidates(cfg)
    searching = len(runs) > 1
    if searching:
        fitting, validation = split_validation(requests, cfg["validation_share"], cfg["seed"])
    else:
        fitting, validation = requests, []
    examples = build_examples(fitting, cfg["train_examples"], cfg["no_tool_share"], cfg["min_tools"],
                              cfg["max_tools"], cfg["seed"], catalog)
    base_sha = get_spec(base).sha256
    key = training_key(examples, cfg, base_sha)
    if read_source(folder).get("sha256") == key and (folder / "config.json").exists():
        return folder
    tok = child_tokenizer(load_model(base, dtype=torch.float32, device="cpu").tokenizer)
    formatter = PromptFormatter(tok, "chat", "gemma3")
    data = [encode_example(formatter, ex, catalog) for ex in examples]

    def source_of(c: dict, ckey: str, out: dict) -> dict:
        return {"sha256": ckey, "key": ckey[:16], "base": base, "base_sha256": base_sha,
                "format_version": FORMAT_VERSION, "config": {k: c[k] for k in TRAIN_KEYS},
                "train_examples": len(examples), "train_tokens": sum(len(ids) for ids, _ in data),
                "train_reply_tokens": sum(len(ids) - n for ids, n in data),
                "no_tool_examples": sum(ex.gold is None for ex in examples),
                "train_requests": len({ex.request_id for ex in examples}),
                "steps": out["steps"], "seconds": out["seconds"], "losses": out["losses"],
                "threads": torch.get_num_threads()}

    def fit(c: dict, ckey: str, into: Path) -> dict:
        """Train candidate ``c`` from the base and save it to ``into``; returns its source."""
        lm = load_model(base, dtype=torch.float32)  # float32 on any device (AdamW on bf16 weights loses updates)
        state_dir = folder.with_name(f"resume-{ckey[:16]}")
        out = train(lm.model, data, c, tok.pad_token_id, state_dir, progress=progress)
        source = source_of(c, ckey, out)
        if validation:
            scores = validation_scores(LoadedModel(get_spec(CHILD), lm.model, tok, {}), validation,
                                       cfg.get("batch_size", 16))
            source["validation"] = scores
        save_checkpoint(lm.model, tok, into, source)
        shutil.rmtree(state_dir, ignore_errors=True)
        return source

    if not searching:  # one configuration (a grid of one value included): nothing to choose
        fit(runs[0], key, folder)
        return folder
    # The search: each candidate trained and scored once (its folder kept until the choice is made).
    found = []
    for i, c in enumerate(runs):
        ckey = training_key(examples, c, base_sha)
        cdir = folder.with_name(f"candidate-{ckey[:16]}")
        source = read_source(cdir)
        if not (source.get("sha256") == ckey and (cdir / "config.json").exists()):
            if progress:
                print(f"[finetune] candidate {i + 1}/{len(runs)}: " + ", ".join(f"{k} = {c[k]}" for k in sorted(cfg["grid"])))
            source = fit(c, ckey, cdir)
        found.append((c, cdir, source))
    best = max(range(len(found)), key=lambda i: (found[i][2]["validation"]["score"], -i))
    c, cdir, chosen = found[best]
    selection = [{**{k: cc[k] for k in sorted(cfg["grid"])}, "key": s["key"], "seconds": s["seconds"],
                  "steps": s["steps"], "final_loss": sum(s["losses"][-5:]) / len(s["losses"][-5:]),
                  **{m: s["validation"][m] for m in ("forced_choice_accuracy", "tool_no_tool_accuracy", "score")},
                  "chosen": j == best}
                 for j, (cc, _, s) in enumerate(found)]
    source = dict(chosen, sha256=key, key=key[:16], candidate_key=chosen["key"], selection=selection,
                  grid=cfg["grid"], validation_share=cfg["validation_share"],
                  validation_tool_requests=sum(bool(r.tool) for r in validation),
                  validation_no_tool_requests=sum(not r.tool for r in validation),
                  search_seconds=sum(s["seconds"] for _, _, s in found))
    (cdir / "source.json").write_text(json.dumps(source, indent=1))
    move_into_place(cdir, folder)
    for _, other, _ in found:
        shutil.rmtree(other, ignore_errors=True)
    return folder


# --- weight divergence --------------------------------------------------------------------------

def weight_divergence(parent, child) -> list[dict]:
    """Per layer, the relative Frobenius norm ``||W_child - W_parent|| / ||W_parent||`` of the attention
    projections (q, k, v, o), of the MLP (gate, up, down) and of both together."""
    pw = dict(parent.named_parameters())
    rows = []
    for i in range(len(child.model.layers)):
        sums = {"attention": [0.0, 0.0], "mlp": [0.0, 0.0]}
        for name, w in child.named_parameters():
            part = ("attention" if ".self_attn." in name else "mlp" if ".mlp." in name else None)
            if part and w.dim() == 2 and name.startswith(f"model.layers.{i}."):
                w0 = pw[name].detach().float().to(w.device)
                sums[part][0] += float((w.detach().float() - w0).pow(2).sum())
                sums[part][1] += float(w0.pow(2).sum())
        row = {"layer": i}
        for part, (d, n) in sums.items():
            row[part] = math.sqrt(d / n)
        row["attention_mlp"] = math.sqrt(sum(d for d, _ in sums.values()) / sum(n for _, n in sums.values()))
        rows.append(row)
    return rows
