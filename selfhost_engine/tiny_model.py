"""Build small random-weight Llama- or Qwen2-style models with a locally trained byte-level BPE tokenizer.

No download is needed: the tokenizer is trained with the `tokenizers` library on built-in text,
the model is a `LlamaForCausalLM` (or `Qwen2ForCausalLM`) with random weights, both saved with
`save_pretrained`. `add_bos=True` makes the tokenizer prepend BOS the way Llama-family tokenizers
do (`TemplateProcessing(single="<bos> $A")`), so prompt-handling bugs that drop it show up in tests.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .loading import MODEL_LOAD_LOCK, build_once

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
EOS_TOKEN = "<|im_end|>"
BOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

# ChatML-style template; generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_BUILTIN_TEXT = """
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
You are a helpful assistant. Answer the question as clearly and concisely as you can.
What is the capital of France? The capital of France is Paris. What is two plus two? Two plus two is four.
Large language models generate text one token at a time. Each step reads the keys and values of every
previous token from a cache, so serving systems store that cache in fixed-size blocks, share blocks
between requests with a common prefix, and schedule many requests together in one batch.
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
class Request:
    def __init__(self, prompt: str, max_tokens: int = 16) -> None:
        self.prompt = prompt
        self.max_tokens = max_tokens
SELECT name, count(*) FROM users WHERE created_at > '2024-01-01' GROUP BY name ORDER BY 2 DESC;
{"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "temperature": 0.7}
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000 3.14159 2.71828 42.
Please summarize the following article in three sentences. Translate this sentence into German.
Write a short poem about the sea. Explain recursion to a five year old. List the planets in order.
Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune. Monday Tuesday Wednesday Thursday Friday.
Thank you! You're welcome. Sure, here is an example. I'm sorry, I cannot help with that request.
"""

_ARCHS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}

DEFAULT_SIZE = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024)


def _corpus() -> list[str]:
    lines = [ln for ln in _BUILTIN_TEXT.splitlines() if ln.strip()]
    words = sorted({w for ln in lines for w in ln.split()})
    # a little combinatorial text so merges see varied contexts
    extra = [" ".join(words[i::7]) for i in range(7)]
    return lines * 4 + extra


def build_tokenizer(vocab_size: int = 1024, add_bos: bool = False):
    """Train a byte-level BPE tokenizer on the built-in text; return a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if add_bos:
        bos = processors.TemplateProcessing(single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B",
                                            special_tokens=[(BOS_TOKEN, tok.token_to_id(BOS_TOKEN))])
        tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), bos])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(
    out_dir: str | os.PathLike,
    *,
    hidden: int = DEFAULT_SIZE["hidden"],
    layers: int = DEFAULT_SIZE["layers"],
    heads: int = DEFAULT_SIZE["heads"],
    kv_heads: int = DEFAULT_SIZE["kv_heads"],
    intermediate: int = DEFAULT_SIZE["intermediate"],
    vocab: int = DEFAULT_SIZE["vocab"],
    max_position_embeddings: int = 4096,
    seed: int = 0,
    initializer_range: float = 0.2,
    arch: str = "llama",
    add_bos: bool = False,
) -> Path:
    """Build and save a random-weight model (arch "llama" or "qwen2") + tokenizer into out_dir."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    config_cls, model_cls = (getattr(transformers, n) for n in _ARCHS[arch])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(vocab, add_bos=add_bos)
    tok.save_pretrained(out)
    # Write a minimal config first so AutoTokenizer resolves the class the same way users will,
    # then size the vocabulary from the tokenizer loaded from the final directory.
    cfg = config_cls(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    cfg.save_pretrained(out)
    loaded = AutoTokenizer.from_pretrained(out)
    cfg.vocab_size = len(loaded)
    cfg.bos_token_id = loaded.bos_token_id
    cfg.eos_token_id = loaded.eos_token_id
    cfg.pad_token_id = loaded.pad_token_id
    torch.manual_seed(seed)
    with MODEL_LOAD_LOCK:  # building runs transformers' post_init (weight tying), as a load does
        model = model_cls(cfg)
    model.generation_config.bos_token_id = cfg.bos_token_id
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.save_pretrained(out)
    (out / "TINY_MODEL.json").write_text(
        json.dumps(dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                        intermediate=intermediate, vocab=cfg.vocab_size, seed=seed, arch=arch,
                        add_bos=add_bos))
    )
    return out


def ensure_tiny_model(cache_dir: str | os.PathLike, name: str = "tiny-llama", **size) -> Path:
    """Return a directory holding the default tiny model, building it once.

    Idempotent and safe when several processes race: each builds into its own temporary
    directory next to the target and renames it into place; the loser discards its copy.
    """
    return build_once(Path(cache_dir), name, "TINY_MODEL.json", lambda tmp: make_tiny_model(tmp, **size))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m selfhost_engine make-tiny-model")
    p.add_argument("dir")
    p.add_argument("--hidden", type=int, default=DEFAULT_SIZE["hidden"])
    p.add_argument("--layers", type=int, default=DEFAULT_SIZE["layers"])
    p.add_argument("--heads", type=int, default=DEFAULT_SIZE["heads"])
    p.add_argument("--kv-heads", type=int, default=DEFAULT_SIZE["kv_heads"])
    p.add_argument("--intermediate", type=int, default=DEFAULT_SIZE["intermediate"])
    p.add_argument("--vocab", type=int, default=DEFAULT_SIZE["vocab"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = make_tiny_model(a.dir, hidden=a.hidden, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads,
                           intermediate=a.intermediate, vocab=a.vocab, seed=a.seed)
    print(path)
