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
def tiny_tokenizer(chat: bool = True):
    """A 2k-token byte-level BPE trained on the catalog and prompt texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [CHAT_TEMPLATE, "Request: Response: CALL You can call these tools:"]
    if paths.TOOLS_FILE.exists():
        corpus.append(paths.TOOLS_FILE.read_text())
    if paths.PROMPTS_FILE.exists():
        corpus += [p["text"] for p in json.loads(paths.PROMPTS_FILE.read_text())["prompts"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>" if chat else "<eos>",
                                   pad_token="<pad>", bos_token=None if chat else "<bos>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    else:
        fast.add_bos_token = True
    return fast


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


def build_tiny(family: str, seed: int = 0):
    """A tiny random model of ``family`` and its tokenizer: ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer(chat=family != "gemma3")
    torch.manual_seed(seed)
    config = tiny_config(family, len(tok))
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger weights than the default init, so attention is far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval(), tok
