"""Tiny randomly initialised models of the real architectures, for tests.

Built in-process from a config (no download): Qwen2, Qwen3 and Gemma3 (with sliding-window
layers) decoders of a few layers, and a byte-level BPE tokenizer trained in a fraction of a
second on the project's own tool and prompt texts. Chat models get a Qwen-style template with
a ``<tools>`` block, so the chat formatting path is exercised exactly as on the real model.
"""

from __future__ import annotations

import functools
import json

import torch

from . import paths

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<bos>", "<eos>", "<pad>"]
# FunctionGemma's control tokens (a Gemma 3 tokenizer with its function-calling tokens).
FUNCTIONGEMMA_SPECIAL = ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "<start_function_declaration>",
                         "<end_function_declaration>", "<start_function_call>", "<end_function_call>",
                         "<start_function_response>", "<end_function_response>", "<escape>"]
FUNCTIONGEMMA_TEMPLATE = paths.ROOT / "toolattn" / "templates" / "functiongemma.jinja"
QWEN3_TEMPLATE = paths.ROOT / "toolattn" / "templates" / "qwen3.jinja"  # Qwen3's format, <think> handling included

# A compact Qwen2.5-style template: system + tool signatures, then the turns.
CHAT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\nYou are a helpful assistant.\\n\\n# Tools\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags.<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(chat: bool = True, style: str | None = None):
    """A 2k-token byte-level BPE trained on the catalog and prompt texts.

    ``style="functiongemma"``: a Gemma-3-like chat tokenizer with FunctionGemma's control tokens and a
    template in its format (``templates/functiongemma.jinja``); ``style="qwen3"``: ``<think>`` and
    ``</think>`` are single tokens and the template is Qwen3's (``templates/qwen3.jinja``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "functiongemma":
        return _functiongemma_tokenizer()
    template = QWEN3_TEMPLATE.read_text(encoding="utf-8") if style == "qwen3" else CHAT_TEMPLATE
    corpus = [template, "Request: Response: CALL You can call these tools:"]
    if paths.TOOLS_FILE.exists():
        corpus.append(paths.TOOLS_FILE.read_text())
    if paths.PROMPTS_FILE.exists():
        corpus += [p["text"] for p in json.loads(paths.PROMPTS_FILE.read_text())["prompts"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = SPECIAL + (["<think>", "</think>"] if style == "qwen3" else [])
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>" if chat else "<eos>",
                                   pad_token="<pad>", bos_token=None if chat else "<bos>")
    if chat:
        fast.chat_template = template
    else:
        fast.add_bos_token = True
    return fast


def _functiongemma_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    template = FUNCTIONGEMMA_TEMPLATE.read_text(encoding="utf-8")
    corpus = [template, "call:get_weather{location:Paris} declaration:description:parameters:properties:"
              "type:STRING OBJECT required: developer model user You are a model that can do function calling "
              "with the following functions"]
    if paths.TOOLS_FILE.exists():
        corpus.append(paths.TOOLS_FILE.read_text())
    if paths.PROMPTS_FILE.exists():
        corpus += [p["text"] for p in json.loads(paths.PROMPTS_FILE.read_text())["prompts"]]
    tok = Tokenizer(models.BPE())
    # Split before ':' '{' '}' ',' as Gemma's vocabulary does around "call:NAME{"
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=tokenizers_regex(r"[:{},\[\]]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=FUNCTIONGEMMA_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<end_of_turn>", pad_token="<pad>",
                                   bos_token="<bos>")
    fast.chat_template = template
    return fast


def tokenizers_regex(pattern: str):
    from tokenizers import Regex

    return Regex(pattern)


def tiny_config(family: str, vocab_size: int):
    from transformers import Gemma3TextConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  tie_word_embeddings=True)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "qwen3":
        return Qwen3Config(head_dim=16, **common)
    if family == "gemma3":
        # Sliding-window layers with a window shorter than a prompt, as in the real model.
        return Gemma3TextConfig(head_dim=16, sliding_window=32, layer_types=[
            "sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=16, **common)
    raise ValueError(f"no tiny config for family {family!r}")


def build_tiny(family: str, seed: int = 0, style: str | None = None):
    """A tiny random model of ``family`` and its tokenizer: ``(model, tokenizer)``; ``style="functiongemma"``:
    a Gemma 3 model with FunctionGemma's tokens and chat format."""
    from transformers import AutoModelForCausalLM

    style = style or ("qwen3" if family == "qwen3" else None)
    tok = tiny_tokenizer(chat=family != "gemma3" or style is not None, style=style)
    torch.manual_seed(seed)
    config = tiny_config(family, len(tok))
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger weights than the default init, so attention is far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval(), tok


# --- random-weight models of the paper's architectures (benchmarks on a GPU, where no weights can go) ---

def random_config(name: str):
    """The published architecture of a hub model, as a config (no download)."""
    from transformers import Gemma3TextConfig, Qwen3Config

    if name == "qwen3-4b":
        return Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                           rope_theta=1_000_000, rms_norm_eps=1e-6, tie_word_embeddings=True)
    if name == "gemma-3-270m":
        return Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                                query_pre_attn_scalar=256, max_position_embeddings=32768,
                                layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3)
    raise ValueError(f"no random config for {name!r}")


def build_random(name: str, device="cpu", dtype=torch.bfloat16, seed: int = 0):
    """A random-weight model of ``name``'s architecture and a tokenizer: the embedded Qwen's tokenizer
    (the same vocabulary, so prompts have realistic lengths) with Qwen3's template for ``qwen3-4b`` when
    it has been converted, else the tiny tokenizers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = random_config(name)
    config._attn_implementation = "sdpa"
    tok = None
    if name == "qwen3-4b":
        folder = paths.model_cache("qwen2.5-coder-1.5b")
        if (folder / "tokenizer.json").exists():
            tok = AutoTokenizer.from_pretrained(folder)
            tok.chat_template = QWEN3_TEMPLATE.read_text(encoding="utf-8")
    if tok is None:
        tok = tiny_tokenizer(chat=True, style="qwen3" if name == "qwen3-4b" else "functiongemma")
    torch.manual_seed(seed)
    with torch.device("cuda" if device == "map" else device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), tok
