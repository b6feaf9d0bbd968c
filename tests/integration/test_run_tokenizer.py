"""``burstbench run --tokenizer``: prompts have exactly the asked length as that tokenizer counts.

The tokenizer is a real BPE trained here on too small a corpus, so burstbench's
prompt words are *not* single tokens in it: without ``--tokenizer`` the prompts
come out longer than asked, with it they are cut to the asked count. The server
is the real streaming test server in its own process; it reports the bodies it
received, which are counted here with the same tokenizer.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from url_process import url_process

from burstbench.traces.schema import Trace, conform, write_trace

tokenizers = pytest.importorskip("tokenizers")


def _tokenizer(folder: Path):
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["the of and to in is you that it he was for on are as " * 20]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["[UNK]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return tok


def _bodies(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/stats?bodies=1&clear=1", timeout=5) as resp:
        data = json.loads(resp.read())
    return [r["body"] for r in (data["records"] if isinstance(data, dict) else data)]


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    from burstbench.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_tokenizer_flag_folder_and_scenario_key_give_exact_prompt_lengths(tmp_path, capsys):
    tok = _tokenizer(tmp_path / "model")
    lengths = [7, 64, 300, 1000]
    df = pl.DataFrame({"arrival_s": [0.01 * i for i in range(4)], "input_tokens": lengths,
                       "output_tokens": [2] * 4})
    trace = write_trace(Trace(conform(df), {"source": "test"}), tmp_path / "t.parquet")

    def count(body: dict) -> int:
        return len(tok.encode(body["prompt"], add_special_tokens=False).ids)

    with url_process("burstbench.testing.stream_server", "--port", "0", "--ttft", "0.001") as (url, _):
        base = ["run", "--url", url, "--trace", str(trace), "--quiet"]
        rc, _, err = _main(capsys, *base, "-o", str(tmp_path / "a.duckdb"))
        assert rc == 0, err
        plain = sorted(count(b) for b in _bodies(url))
        assert plain != lengths and all(c > n for c, n in zip(plain, lengths, strict=True))

        rc, _, err = _main(capsys, *base, "-o", str(tmp_path / "b.duckdb"), "--tokenizer", str(tmp_path / "model"))
        assert rc == 0, err
        assert sorted(count(b) for b in _bodies(url)) == lengths

        sc = tmp_path / "sc.yaml"
        sc.write_text(f"tokenizer: {tmp_path / 'model' / 'tokenizer.json'}\n")
        rc, _, err = _main(capsys, *base, "-o", str(tmp_path / "c.duckdb"), "--scenario", str(sc))
        assert rc == 0, err
        assert sorted(count(b) for b in _bodies(url)) == lengths


@pytest.mark.parametrize("make", ["missing", "empty_folder", "not_json"])
def test_a_bad_tokenizer_is_one_line_naming_the_path(tmp_path, capsys, make):
    df = pl.DataFrame({"arrival_s": [0.0], "input_tokens": [5], "output_tokens": [2]})
    trace = write_trace(Trace(conform(df), {"source": "test"}), tmp_path / "t.parquet")
    target = tmp_path / "tok"
    if make == "empty_folder":
        target.mkdir()
    elif make == "not_json":
        target = tmp_path / "tokenizer.json"
        target.write_text("{not json")
    rc, out, err = _main(capsys, "run", "--url", "http://127.0.0.1:9", "--trace", str(trace),
                         "-o", str(tmp_path / "r.duckdb"), "--tokenizer", str(target))
    lines = err.strip().splitlines()
    assert rc == 3 and len(lines) == 1 and str(target) in lines[0], err
    assert out == "" and not (tmp_path / "r.duckdb").exists()
