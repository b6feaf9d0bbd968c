"""The reference server's field readers and synthetic answers, without a server."""

from __future__ import annotations

import pytest

from burstbench.backends.reference.fields import (
    MAX_DEPTH,
    FieldError,
    Fields,
    HugeInt,
    nesting_depth,
    parse_json,
)
from burstbench.backends.reference.tokens import Answer, id_word, output_text, word_id


def test_nesting_depth_skips_strings_and_escapes():
    assert nesting_depth(b'{"a": [1, [2]]}') == 3
    assert nesting_depth(b'{"a": "[[[[\\"[[[["}') == 1
    assert nesting_depth(b"[]" * 1000) == 1
    assert nesting_depth(b"5") == 0


def test_parse_json_bounds_depth_and_long_integers():
    with pytest.raises(FieldError, match="nests"):
        parse_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    big = parse_json(b'{"x": ' + b"7" * 5000 + b"}")["x"]
    assert isinstance(big, HugeInt) and big.digits == 5000
    assert parse_json(b'{"x": -9223372036854775808}')["x"] == -(2**63)
    with pytest.raises(FieldError, match="not valid JSON"):
        parse_json(b"\xff\xfe")


def test_readers_are_strict_and_name_the_field():
    f = Fields({"a": True, "b": "no", "c": 5, "d": 1.5, "e": None, "s": ["x", ""]}, "opts.")
    with pytest.raises(FieldError) as e:
        f.int("a", 0, 10)  # a bool is not an integer
    assert e.value.param == "opts.a"
    with pytest.raises(FieldError):
        f.bool("b")  # "no" is not false
    with pytest.raises(FieldError):
        f.int("c", 6, 10)
    with pytest.raises(FieldError):
        f.int("d", 0, 10)
    assert f.int("e", 0, 10, default=3) == 3  # null: not given
    assert f.float("c", 0, 10) == 5.0
    with pytest.raises(FieldError):
        f.strings("s", 4, 10)  # an empty stop string
    with pytest.raises(FieldError):
        Fields({"x": float("nan")}).float("x", 0, 1)
    with pytest.raises(FieldError) as e:
        Fields({"x": HugeInt(5000)}).int("x", 1, 100)
    assert "5000-digit" in str(e.value) and len(str(e.value)) < 200


def test_answer_stop_cuts_text_and_tokens_consistently():
    key, n = 11, 40
    text = output_text(key, 0, n)
    words = text.split()
    stop = words[7][1:] + " " + words[8][:2]  # spans a token boundary, starts mid-token
    pos = text.index(stop)
    a = Answer.make(key, n, 0, "length", ("zzz-not-there", stop))
    assert a.finish_reason == "stop" and a.stop_reason == stop
    assert a.text(0, a.n) == text[:pos] and a.n == 9  # generated through the token completing it
    assert "".join(a.text(i, 1) for i in range(a.n)) == a.text(0, a.n)  # streamed == whole
    b = Answer.make(key, n, 0, "length", (stop,), include_stop=True)
    assert b.text(0, b.n) == text[: pos + len(stop)]
    assert Answer.make(key, n, 0, "length", ("zzz",)).n == n


def test_answer_stop_ignores_reasoning_tokens():
    key, n, r = 5, 30, 10
    reasoning, visible = output_text(key, 0, r), output_text(key, r, n - r)
    only_in_reasoning = [w for w in reasoning.split() if " " + w not in visible]
    assert only_in_reasoning  # (this key's texts have one; the test needs it)
    a = Answer.make(key, n, r, "length", (" " + only_in_reasoning[0],))
    assert a.n == n and a.stop_reason is None and a.text(0, r) == reasoning


def test_token_ids_round_trip():
    vocab = 128256
    for w in ("the", "of", "tok5000"):
        assert id_word(word_id(w, vocab)) == w
    i = word_id("zebra", vocab)
    assert 0 <= i < vocab and i == word_id("zebra", vocab)
    assert word_id("the", vocab) == 0 and id_word(0) == "the"
