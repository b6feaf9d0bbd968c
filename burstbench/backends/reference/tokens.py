"""Synthetic output: token counts, lengths and text for the reference engine.

The reference engine has no tokenizer and no weights, so everything here is
defined by counting whitespace-separated words, which is also how a client can
check it: a response's text splits into exactly ``completion_tokens`` words.

- Prompt length: the number of whitespace-separated words of the prompt (chat:
  of every message's text content). There is no chat template overhead; clients
  that size prompts in words get exactly the token count they asked for.
- Output length: ``max_tokens`` when the request sets ``ignore_eos`` (the way
  benchmark clients replay a trace); otherwise drawn from ``OutputLengths``
  with a seed derived from the request (its ``seed`` field, or its prompt), so
  the same request gets the same length every time, capped by ``max_tokens``.
- Reasoning models put the first ``reasoning_share`` of their tokens (default
  0.74, the share seen in DeepSeek-R1-style traces) into ``reasoning_content``.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from burstbench.errors import UsageError

DEFAULT_REASONING_SHARE = 0.74

# A small vocabulary of short ASCII words (no whitespace inside, no JSON escapes needed).
WORDS: tuple[str, ...] = tuple(
    """the of and to in is that for it as was with be by on not he this are or his from at
    which but have an they you were her she there been one all we their has would when if
    so no what up out said about into than them can only other new some could time these
    two may then do first any my now such like our over man me even most made after also
    did many before must through back years where much your way well down should because
    each just those people how too little state good very make world still own see men work
    long get here between both life being under never day same another know while last
    might us great old year off come since against go came right used take three""".split()  # noqa: SIM905
)


def prompt_tokens(text: str) -> int:
    """Tokens of a prompt, by the engine's definition: whitespace-separated words."""
    return len(text.split())


def token_text(rid: int, index: int) -> str:
    """The text of output token ``index`` of request ``rid``: one word with a leading space."""
    return " " + WORDS[(rid * 7919 + index * 104729) % len(WORDS)]


def output_text(rid: int, start: int, count: int) -> str:
    """Tokens ``start .. start+count-1`` as one string (``count`` words)."""
    n = len(WORDS)
    base = rid * 7919
    return "".join(" " + WORDS[(base + i * 104729) % n] for i in range(start, start + count))


def reasoning_split(n: int, share: float) -> int:
    """Reasoning tokens among ``n`` outputs: ``floor(share·n)``, leaving at least one visible token."""
    if n <= 1 or share <= 0:
        return 0
    return min(int(share * n), n - 1)


def request_seed(*parts: object) -> int:
    """A stable 64-bit seed from request fields (process-independent, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class OutputLengths:
    """How long an answer is when the client lets the model stop (no ``ignore_eos``).

    ``kind``: ``lognormal`` (median ``mean·exp(-sigma²/2)``), ``exponential`` or
    ``fixed``; ``mean`` in tokens. Values are at least 1.
    """

    kind: str = "lognormal"
    mean: float = 256.0
    sigma: float = 0.8

    def __post_init__(self) -> None:
        if self.kind not in ("lognormal", "exponential", "fixed"):
            raise UsageError(f"output length distribution must be lognormal, exponential or fixed, got '{self.kind}'")
        if not self.mean >= 1:
            raise UsageError(f"output length mean must be >= 1, got {self.mean}")
        if self.sigma < 0:
            raise UsageError(f"output length sigma must be >= 0, got {self.sigma}")

    def draw(self, seed: int) -> int:
        rng = random.Random(seed)
        if self.kind == "fixed":
            v = self.mean
        elif self.kind == "exponential":
            v = rng.expovariate(1.0 / self.mean)
        else:
            mu = math.log(self.mean) - self.sigma**2 / 2
            v = rng.lognormvariate(mu, self.sigma)
        return max(1, round(v))

    @classmethod
    def parse(cls, spec: str) -> OutputLengths:
        """``lognormal:256:0.8``, ``exponential:200``, ``fixed:128``."""
        parts = spec.split(":")
        try:
            kind = parts[0]
            mean = float(parts[1]) if len(parts) > 1 else 256.0
            sigma = float(parts[2]) if len(parts) > 2 else 0.8
        except ValueError as exc:
            raise UsageError(f"--output-len '{spec}': expected KIND[:MEAN[:SIGMA]], e.g. lognormal:256:0.8") from exc
        return cls(kind, mean, sigma)


# -- token ids (``/tokenize``, ``/detokenize``, prompts given as ids) ------------------------

_WORD_ID = {w: i for i, w in enumerate(dict.fromkeys(WORDS))}


def word_id(word: str, vocab_size: int) -> int:
    """A word's token id: its place in ``WORDS``, ``tokN`` for N, else a stable id from its hash."""
    i = _WORD_ID.get(word)
    if i is not None:
        return i
    if word.startswith("tok") and word[3:].isdigit() and len(word) < 16 and len(_WORD_ID) <= int(word[3:]) < vocab_size:
        return int(word[3:])
    span = max(1, vocab_size - len(_WORD_ID))
    return len(_WORD_ID) + request_seed("word", word) % span


def id_word(token_id: int) -> str:
    """The word of a token id (inverse of ``word_id`` on the vocabulary and on ``tokN``)."""
    return WORDS[token_id] if token_id < len(WORDS) and _WORD_ID[WORDS[token_id]] == token_id else f"tok{token_id}"


# -- one answer: stop strings and logprobs ----------------------------------------------------


def token_logprob(key: int, index: int) -> float:
    """The synthetic log-probability of output token ``index`` (stable, in (-5, 0])."""
    return -((key * 2654435761 + index * 40503) % 1000) / 200.0


def top_alternatives(key: int, index: int, k: int) -> list[tuple[str, float]]:
    """The ``k`` most likely tokens at ``index``, sampled one first (it is always the most likely)."""
    lp = token_logprob(key, index)
    out = [(token_text(key, index), lp)]
    n = len(WORDS)
    base = key * 7919 + index * 104729
    seen = {out[0][0]}
    j = 1
    while len(out) < k and j < n:
        tok = " " + WORDS[(base + j * 13) % n]
        if tok not in seen:
            seen.add(tok)
            out.append((tok, lp - 0.5 * len(out) - 0.25))
        j += 1
    return out[:k]


@dataclass(frozen=True)
class Answer:
    """What one choice generates: ``n`` tokens of text ``key``, the first ``reasoning`` of them reasoning.

    A stop string ends the answer at the token that completes it (vLLM checks
    stop strings on the text as it is detokenized), and the client sees the
    visible text up to the stop string (through it with
    ``include_stop_str_in_output``): token ``cut_token`` shows its first
    ``cut_chars`` characters, later tokens show nothing.
    """

    key: int
    n: int
    reasoning: int = 0
    finish_reason: str = "length"
    stop_reason: str | None = None
    cut_token: int | None = None
    cut_chars: int = 0

    @classmethod
    def make(cls, key: int, n: int, reasoning: int, finish_reason: str, stop: tuple[str, ...] = (), include_stop: bool = False) -> Answer:
        if not stop:
            return cls(key, n, reasoning, finish_reason)
        text = output_text(key, reasoning, n - reasoning)
        found = [(p, s) for s in stop if (p := text.find(s)) >= 0]
        if not found:
            return cls(key, n, reasoning, finish_reason)
        pos, s = min(found, key=lambda x: (x[0] + len(x[1]), x[0]))
        end = pos + len(s)  # the token holding character end-1 completes the match
        cut = end if include_stop else pos
        chars = tokens = 0
        cut_token, cut_chars = None, 0
        while chars < end:
            width = len(token_text(key, reasoning + tokens))
            if cut_token is None and chars + width > cut:
                cut_token, cut_chars = reasoning + tokens, cut - chars
            chars += width
            tokens += 1
        if cut_token is None:  # the cut is at the end of the last token
            cut_token, cut_chars = reasoning + tokens, 0
        return cls(key, reasoning + tokens, reasoning, "stop", s, cut_token, cut_chars)

    def text(self, start: int, count: int) -> str:
        """Visible text of tokens ``start .. start+count-1`` (clipped at the stop string)."""
        ct = self.cut_token
        if ct is None or start + count <= ct:
            return output_text(self.key, start, count)
        if start > ct:
            return ""
        return output_text(self.key, start, ct - start) + token_text(self.key, ct)[: self.cut_chars]

    def token(self, index: int) -> str:
        """Visible text of one token (for logprobs)."""
        return self.text(index, 1)
