"""Build a tiny random-weight Llama model and its tokenizer, with nothing downloaded.

Run by ``burstbench vllm-cpu build-model`` with the vLLM environment's Python
(it has ``torch``, ``transformers`` and ``tokenizers``; the project's own
environment need not). It imports nothing from burstbench, so that Python never
needs the project on its path: the prompt words arrive as a JSON file.

Why a trained tokenizer: burstbench builds prompts from a list of common words
(``burstbench.backends.prompts.WORDS``) and counts one token per word. A
tokenizer that splits those words into characters made 3,096 asked tokens into
10,262. So a byte-level BPE is trained here on a corpus of exactly those words,
with and without a leading space, until each is one token; the build checks that
and fails otherwise. Byte-level means any other text still tokenizes.

The model is a Llama-architecture decoder with random bf16 weights: vLLM runs it
like any Llama, and with ``ignore_eos`` the output length is what was asked, so
what it says does not matter. ``burstbench-model.json`` records what the tests
need to account for a server's ``usage.prompt_tokens``: the special tokens added
to a completions prompt (BOS) and the chat template's wrapping of one user turn,
both counted here by ``transformers`` itself, not by the server under test.

Usage: ``python vllm_model.py OUT_DIR WORDS_JSON [--layers 4] [--hidden 256] [--kv-heads N]``

``--kv-heads`` below the number of attention heads (``hidden / 64``) gives grouped-query
attention, as most served models have: fewer KV heads mean fewer KV-cache bytes per token,
which is what the twin's cost model reads, so a second model shape checks that term.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPECIAL = ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
FACTS = "burstbench-model.json"
BUILDER = 1  # raise when what is built changes, so `build-model` rebuilds an older model


def train_tokenizer(words: list[str]):
    """Byte-level BPE whose vocabulary holds every word, bare and after a space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096, min_frequency=2, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    # every word many times bare (line start) and after a space, so BPE merges each whole
    corpus = [f"{w} {w} {w} {w}\n" for w in words for _ in range(8)]
    corpus += [" ".join(words[i:] + words[:i]) + "\n" for i in range(len(words))]
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    bad = [w for w in words for form in (w, " " + w)
           if len(tok.encode(form, add_special_tokens=False).ids) != 1]
    if bad:
        raise SystemExit(f"tokenizer build: these words are not single tokens: {bad[:10]}")
    return tok


def build(out: Path, words: list[str], *, layers: int, hidden: int, seed: int,
          kv_heads: int | None = None) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    raw = train_tokenizer(words)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="</s>",
        additional_special_tokens=SPECIAL[2:], model_max_length=4096,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)

    torch.manual_seed(seed)
    heads = max(hidden // 64, 1)
    kv_heads = kv_heads or heads
    if heads % kv_heads:
        raise SystemExit(f"--kv-heads {kv_heads} must divide the {heads} attention heads")
    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(), hidden_size=hidden, intermediate_size=hidden * 2 + hidden // 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, bos_token_id=raw.token_to_id("<s>"),
        eos_token_id=raw.token_to_id("</s>"), pad_token_id=raw.token_to_id("</s>"),
        tie_word_embeddings=False, torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)

    probe = " ".join(words[:50])
    plain = len(hf_tok(probe, add_special_tokens=False)["input_ids"])
    with_special = len(hf_tok(probe)["input_ids"])
    chat_ids = hf_tok.apply_chat_template([{"role": "user", "content": probe}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"]
    if not (with_special > plain and len(chat_ids) > with_special):
        raise SystemExit(f"tokenizer build: BOS or chat template missing ({plain}, {with_special}, {len(chat_ids)})")
    facts = {
        "completions_special_tokens": with_special - plain,
        "chat_overhead_tokens": len(chat_ids) - plain,
        "vocab_size": raw.get_vocab_size(),
        "layers": layers, "hidden_size": hidden, "kv_heads": kv_heads, "seed": seed,
        "words_single_token": True, "builder": BUILDER,
    }
    (out / FACTS).write_text(json.dumps(facts, indent=1) + "\n")
    return facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("words_json", type=Path)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--kv-heads", type=int, default=None, help="[the attention heads: no grouping]")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    words = json.loads(a.words_json.read_text())
    facts = build(a.out, words, layers=a.layers, hidden=a.hidden, seed=a.seed, kv_heads=a.kv_heads)
    print(json.dumps(facts), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
