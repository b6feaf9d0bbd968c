"""Prompt text from token counts, without a hub tokenizer.

A trace usually has only ``input_tokens`` (and Mooncake-style ``prefix_hashes``),
not the prompt. To replay it we need text that a server tokenizes to about that
many tokens, whatever its tokenizer, and text that repeats exactly where the
trace says prompts share a prefix, so the server's prefix cache sees the reuse
the trace had.

How: the text is ``n`` words from ``WORDS`` joined by single spaces. Each word
is a very common short lowercase English word that is one token with or without
a leading space in every vocabulary we could check offline: cl100k_base and
o200k_base (GPT-4/4o), the Llama-2/Mistral SentencePiece 32k model (``▁word``)
and Mistral's Tekken; prompts of 100, 1,000 and 8,000 words counted exactly
100, 1,000 and 8,000 tokens in all four. Llama 3 (a cl100k superset) and Qwen2
(a cl100k-style BPE) were not available offline and are expected to behave the
same. Expected drift, which the backend measures through
``usage.prompt_tokens`` (``Outcome.input_tokens_server``):

* +1 per request for a BOS token (Llama, Mistral); 0 for GPT-style vocabularies;
* chat: + the chat template's wrapping (roughly 5-30 tokens, model dependent);
* other vocabularies (older GPT-2, CJK-centred ones): unmeasured, possibly a few %.

For exact counts give a local ``tokenizer.json`` (needs the optional
``tokenizers`` package): the word text is then cut at the token boundary where
the tokenizer's count equals the target (special tokens such as BOS, which the
server adds, are not counted).

Determinism: the same (seed, request id, hashes, length) gives the same text in
every process, so multi-worker runs and reruns send identical prompts.
Each prefix hash maps to one block of ``block_size`` words derived from the hash
alone, so requests sharing leading hashes share leading text; the rest of a
prompt is a window of a fixed word pool at an offset derived from the request
id, so unrelated requests share no prefix.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

from burstbench.errors import InputError, UsageError

# Very common short English words (lowercase ASCII). Checked offline (packaged
# vocabularies): each is exactly one token both with and without a leading space in
# cl100k_base, o200k_base, Llama-2/Mistral SentencePiece (32k) and Mistral Tekken;
# these, which split without the space somewhere, were dropped: began carry eat
# enough feet few grow hear might saw seem spell study tell them thought together
# took want young.
WORDS: tuple[str, ...] = tuple(
    """
    the of and to in is you that it he was for on are as with his they at be this have
    from or one had by word but not what all were we when your can said there use an
    each which she do how their if will up other about out many then these so some her
    would make like him into time has look two more write go see number no way could
    people my than first water been call who its now find long down day did get come
    made may part over new sound take only little work know place year live me back give
    most very after thing our just name good man think say great where help through much
    before line right too mean old any same boy follow came show also around form three
    small set put end does another well large must big even such because turn here why
    ask went men read need land different home us move try kind hand picture again
    change off play air away animal house point page letter mother answer found still
    learn should world high every near add food between own below country plant last
    school father keep tree never start city earth eye light head under story left while
    along close something next hard open example begin life always those both paper got
    group often run important until children side car mile night walk white sea river
    four state once book stop without second later miss idea face watch far real almost
    let above girl sometimes talk soon list song being leave family
    """.split()  # noqa: SIM905 - a word list reads better as text
)

_POOL_SIZE = 1 << 17


_M64 = (1 << 64) - 1
_POOL, _BLOCK, _TAIL = 1, 2, 3  # domain tags, so a block and a tail never coincide


def _mix(*parts: int) -> int:
    """A stable 64-bit hash of integers (splitmix64 steps; Python's hash() is salted
    per process, and this runs once per request, so it must be cheap)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & _M64)) * 0xBF58476D1CE4E5B9 & _M64
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & _M64
        x ^= x >> 29
    return x


class PromptBuilder:
    """Makes the prompt of one request: real text when given, else synthetic words.

    ``block_size`` is the trace's prefix-hash block size in tokens (Mooncake: 512).
    """

    def __init__(
        self,
        *,
        block_size: int = 512,
        seed: int = 0,
        tokenizer_json: str | Path | None = None,
        cache_blocks: int = 4096,
    ) -> None:
        if block_size <= 0:
            raise UsageError(f"prefix block size must be positive, got {block_size}")
        self.block_size = block_size
        self.seed = seed
        rng = random.Random(_mix(_POOL, seed))
        self._pool: list[str] = rng.choices(WORDS, k=_POOL_SIZE)
        self._blocks: OrderedDict[int, list[str]] = OrderedDict()
        self._cache_blocks = cache_blocks
        self._tokenizer = load_tokenizer(tokenizer_json) if tokenizer_json else None

    # -- public ---------------------------------------------------------------

    def prompt(self, request_id: int, input_tokens: int, prefix_hashes=None) -> str:
        """Synthetic prompt text of ``input_tokens`` tokens for one request."""
        n = max(int(input_tokens), 1)
        words = self._words(request_id, n, prefix_hashes)
        text = " ".join(words)
        if self._tokenizer is not None:
            text = self._fit_exact(request_id, n, prefix_hashes, text)
        return text

    def count_tokens(self, text: str) -> int | None:
        """Tokens in ``text`` by the local tokenizer, or None without one."""
        if self._tokenizer is None:
            return None
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def for_request(self, request: Any) -> str:
        """The completions prompt of a ``Request``: its real text, its messages, or words.

        An empty real prompt counts as none (servers reject empty prompts), so the
        request is replayed with ``input_tokens`` words instead."""
        if request.prompt:
            return request.prompt
        if request.messages:
            return "\n".join(_content_text(m.get("content")) for m in request.messages)
        return self.prompt(request.request_id, request.input_tokens, request.prefix_hashes)

    def messages_for_request(self, request: Any) -> list[dict[str, Any]]:
        """The chat messages of a ``Request``: its history, or its prompt as one user turn."""
        if request.messages:
            return request.messages
        return [{"role": "user", "content": self.for_request(request)}]

    # -- internals ------------------------------------------------------------

    def _words(self, request_id: int, n: int, prefix_hashes) -> list[str]:
        words: list[str] = []
        if prefix_hashes:
            for h in prefix_hashes:
                if len(words) >= n:
                    break
                words.extend(self._block(int(h)))
            if len(words) >= n:
                return words[:n]
        words.extend(self._window(request_id, n - len(words)))
        return words

    def _block(self, h: int) -> list[str]:
        block = self._blocks.get(h)
        if block is None:
            block = random.Random(_mix(_BLOCK, self.seed, h)).choices(WORDS, k=self.block_size)
            self._blocks[h] = block
            if len(self._blocks) > self._cache_blocks:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(h)
        return block

    def _window(self, request_id: int, n: int) -> list[str]:
        if n <= 0:
            return []
        pool = self._pool
        off = _mix(_TAIL, self.seed, request_id) % _POOL_SIZE
        if off + n <= _POOL_SIZE:
            return pool[off : off + n]
        out = pool[off:]
        while len(out) < n:
            out.extend(pool[: n - len(out)])
        return out

    def _fit_exact(self, request_id: int, n: int, prefix_hashes, text: str) -> str:
        """Cut the word text at a token boundary so the local tokenizer counts exactly ``n``.

        The cut keeps the text a prefix of the full word sequence, so requests that
        share prefix hashes still share their leading text.
        """
        tok = self._tokenizer
        words_n = n
        enc = tok.encode(text, add_special_tokens=False)
        for _ in range(6):  # grow until the words give at least n tokens
            if len(enc.ids) >= n:
                break
            words_n *= 2
            text = " ".join(self._words(request_id, words_n, prefix_hashes))
            enc = tok.encode(text, add_special_tokens=False)
        if len(enc.ids) == n:
            return text
        if len(enc.ids) < n:
            return text  # cannot reach n; the server-side drift is still reported
        offsets = enc.offsets
        first_cut = text[: offsets[n - 1][1]]
        for k in (n, n - 1, n + 1, n - 2, n + 2):
            if 0 < k <= len(offsets):
                cut = text[: offsets[k - 1][1]]
                if self.count_tokens(cut) == n:
                    return cut
        return first_cut  # closest found; the backend still reports server-side drift


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def tokenizer_file(path: str | Path) -> Path:
    """The ``tokenizer.json`` that ``path`` names: the file itself, or the one in a model folder.

    A served model's folder is what users have at hand (vLLM's ``--tokenizer`` takes
    one too), so both are accepted; anything else is an error naming the path."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
        if not p.is_file():
            raise InputError("this folder has no tokenizer.json; give the tokenizer.json file or the "
                             "folder of a model saved with a fast (tokenizers) tokenizer", path=path)
    elif not p.is_file():
        raise InputError("file not found; give the path of a local tokenizer.json or its folder", path=p)
    return p


def load_tokenizer(path: str | Path):
    """A ``tokenizers.Tokenizer`` from a local ``tokenizer.json`` or its folder; clear errors otherwise."""
    p = tokenizer_file(path)
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise UsageError(
            "a tokenizer was given but the 'tokenizers' package is not installed; "
            "run `pip install tokenizers` or drop the tokenizer option "
            "(prompts then use the tokenizer-free word scheme)"
        ) from e
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises its own Exception type
        raise InputError(
            f"not a valid tokenizer.json ({e}); give a Hugging Face tokenizers JSON file",
            path=p,
        ) from e
