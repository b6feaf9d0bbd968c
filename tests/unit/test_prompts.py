"""Prompt synthesis from token counts: lengths, determinism, shared prefixes, real text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from burstbench.backends.base import Request
from burstbench.backends.prompts import WORDS, PromptBuilder, load_tokenizer
from burstbench.errors import InputError, UsageError


def test_word_count_is_the_token_target() -> None:
    b = PromptBuilder()
    for n in (1, 2, 17, 512, 3000, 200_000):  # the last exceeds the word pool
        words = b.prompt(7, n).split(" ")
        assert len(words) == n
        assert all(w in WORDS for w in words)


def test_words_are_plain_single_words() -> None:
    assert len(set(WORDS)) == len(WORDS) >= 200
    for w in WORDS:
        assert w.isascii() and w.isalpha() and w.islower() and 1 < len(w) <= 9


def test_deterministic_across_processes() -> None:
    code = (
        "from burstbench.backends.prompts import PromptBuilder;"
        "print(PromptBuilder(block_size=4).prompt(3, 20, [11, 12]))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == PromptBuilder(block_size=4).prompt(3, 20, [11, 12])


def test_unrelated_requests_do_not_share_a_prefix() -> None:
    b = PromptBuilder()
    a, c = b.prompt(1, 64).split(), b.prompt(2, 64).split()
    assert a[:16] != c[:16]
    assert PromptBuilder(seed=1).prompt(1, 64) != b.prompt(1, 64)


def test_shared_hashes_share_prefix_text() -> None:
    bs = 8
    b = PromptBuilder(block_size=bs)
    p1 = b.prompt(1, 40, [101, 102, 103]).split()
    p2 = b.prompt(2, 40, [101, 102, 999]).split()
    p3 = b.prompt(3, 40, [555, 102]).split()
    assert len(p1) == len(p2) == len(p3) == 40
    assert p1[: 2 * bs] == p2[: 2 * bs]  # two shared blocks
    assert p1[2 * bs : 3 * bs] != p2[2 * bs : 3 * bs]  # third differs
    assert p1[3 * bs :] != p2[3 * bs :]  # unique tails
    assert p3[:bs] != p1[:bs]  # a block's text depends on its hash
    assert p3[bs : 2 * bs] == p1[bs : 2 * bs]  # the same hash gives the same block anywhere
    # a fresh builder (another worker) gives the same blocks
    assert PromptBuilder(block_size=bs).prompt(9, 16, [101, 102]).split() == p1[: 2 * bs]


def test_hashes_longer_than_the_prompt_truncate_the_last_block() -> None:
    b = PromptBuilder(block_size=8)
    full = b.prompt(1, 24, [1, 2, 3]).split()
    part = b.prompt(2, 20, [1, 2, 3]).split()
    assert part == full[:20]


def test_request_text_prefers_real_prompt_then_messages() -> None:
    b = PromptBuilder()
    r = Request(request_id=1, input_tokens=5, prompt="What is two plus two?")
    assert b.for_request(r) == "What is two plus two?"
    assert b.messages_for_request(r) == [{"role": "user", "content": "What is two plus two?"}]
    msgs = [
        {"role": "user", "content": "a b"},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
    ]
    r2 = Request(request_id=2, input_tokens=5, messages=msgs)
    assert b.messages_for_request(r2) is msgs
    assert b.for_request(r2) == "a b\nc"
    r3 = Request(request_id=3, input_tokens=6, prefix_hashes=(5,))
    assert len(b.for_request(r3).split()) == 6
    r4 = Request(request_id=4, input_tokens=7, prompt="")
    assert len(b.for_request(r4).split()) == 7


def test_bad_block_size() -> None:
    with pytest.raises(UsageError, match="block size"):
        PromptBuilder(block_size=0)


def test_tokenizer_json_errors(tmp_path) -> None:
    missing = tmp_path / "nope.json"
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="pip install tokenizers"):
            load_tokenizer(missing)
        return
    with pytest.raises(InputError, match=r"nope\.json"):
        load_tokenizer(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json"):
        load_tokenizer(bad)


def test_exact_lengths_with_a_local_tokenizer(tmp_path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    # a real BPE trained here on a small corpus, so our words are NOT all single tokens
    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["the of and to in is you that it he was for on are as " * 20]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    b = PromptBuilder(tokenizer_json=path)
    for n in (10, 50, 200):
        text = b.prompt(1, n)
        assert len(tok.encode(text, add_special_tokens=False).ids) == n


def test_one_token_per_word_in_packaged_vocabularies() -> None:
    """How the word list was checked (runs where `bpe-openai` is installed; it packages
    the cl100k/o200k vocabularies, so nothing is downloaded)."""
    bpe_openai = pytest.importorskip("bpe_openai")
    b = PromptBuilder(block_size=16)
    for name in ("cl100k_base", "o200k_base"):
        enc = bpe_openai.get_encoding(name)
        assert all(len(enc.encode(w)) == 1 == len(enc.encode(" " + w)) for w in WORDS), name
        for i, n in enumerate((1, 33, 700)):
            assert len(enc.encode(b.prompt(i, n, [1, 2]))) == n


def test_url_credentials_become_basic_auth_and_leave_the_url() -> None:
    import base64

    from burstbench.backends.base import split_credentials

    url, auth = split_credentials("http://alice:p%40ss@127.0.0.1:8000/v1")
    assert url == "http://127.0.0.1:8000/v1"
    assert auth is not None and (auth.login, auth.password) == ("alice", "p@ss")
    assert base64.b64decode(auth.encode().split()[1]) == b"alice:p@ss"
    assert split_credentials("http://127.0.0.1:8000") == ("http://127.0.0.1:8000", None)
