"""What the reference server sends back: bodies, SSE chunks, logprobs and error objects.

The shapes are vLLM's OpenAI server's, so a client written against vLLM reads
them unchanged. ``ChunkShape`` pre-builds the JSON around a streamed token's
text, because the server writes one event per request per engine iteration and
that path must stay cheap; ``chunk`` builds the general event (several
choices, logprobs, per-chunk usage) as a dict.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from burstbench.backends.reference.tokens import Answer, token_logprob, top_alternatives


def error_body(message: str, *, etype: str = "invalid_request_error", param: str | None = None, code: Any = None) -> dict[str, Any]:
    """vLLM's (and OpenAI's) error object."""
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


def error(status: int, message: str, *, etype: str = "invalid_request_error", param: str | None = None, code: Any = None, headers: dict[str, str] | None = None) -> web.Response:
    """An error response with ``error_body``."""
    return web.json_response(error_body(message, etype=etype, param=param, code=code), status=status, headers=headers)


def usage(n_prompt: int, n_out: int, *, cached: int | None = None, reasoning: int = 0) -> dict[str, Any]:
    """The ``usage`` object (``prompt_tokens_details`` when the cached count is known)."""
    u: dict[str, Any] = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning:
        u["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return u


def response_body(rid: str, created: int, model: str, chat: bool, choices: list[dict[str, Any]], usage_obj: dict[str, Any]) -> dict[str, Any]:
    """A whole (non-streamed) completion or chat completion."""
    obj = "chat.completion" if chat else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, "usage": usage_obj}


# -- logprobs ---------------------------------------------------------------------------------

Entry = tuple[str, float | None, list[tuple[str, float]] | None]  # token, logprob, top alternatives


def answer_entries(a: Answer, start: int, count: int, k: int) -> list[Entry]:
    """Logprob entries of the visible tokens ``start .. start+count-1`` of an answer."""
    out: list[Entry] = []
    for i in range(start, start + count):
        tok = a.token(i)
        if a.cut_token is not None and i >= a.cut_token and not tok:
            break
        alts = top_alternatives(a.key, i, max(k, 1))
        alts[0] = (tok, alts[0][1])
        out.append((tok, token_logprob(a.key, i), alts))
    return out


def prompt_entries(text: str) -> list[Entry]:
    """Echoed prompt tokens: the first has no logprob (nothing precedes it), as in vLLM."""
    words = text.split()
    return [((" " if i else "") + w, None if i == 0 else -1.0, None if i == 0 else [((" " if i else "") + w, -1.0)]) for i, w in enumerate(words)]


def completion_logprobs(entries: list[Entry], k: int, offset: int) -> dict[str, Any]:
    """Completions' logprobs: ``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``."""
    offsets = []
    for tok, _, _ in entries:
        offsets.append(offset)
        offset += len(tok)
    return {
        "text_offset": offsets,
        "token_logprobs": [lp for _, lp, _ in entries],
        "tokens": [t for t, _, _ in entries],
        "top_logprobs": [None if alts is None else dict(alts[: max(k, 1)]) for _, _, alts in entries],
    }


def chat_logprobs(entries: list[Entry], k: int) -> dict[str, Any]:
    """Chat's logprobs: ``content: [{token, logprob, bytes, top_logprobs}]``."""

    def one(tok: str, lp: float) -> dict[str, Any]:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}

    return {
        "content": [
            {**one(tok, lp if lp is not None else 0.0), "top_logprobs": [one(t, v) for t, v in (alts or [])[:k]]}
            for tok, lp, alts in entries
        ]
    }


# -- whole responses --------------------------------------------------------------------------


def choice(chat: bool, text: str, finish_reason: str | None, *, reasoning: str | None = None, index: int = 0, logprobs: dict[str, Any] | None = None, stop_reason: str | None = None) -> dict[str, Any]:
    """One choice of a whole response."""
    if chat:
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning:
            msg["reasoning_content"] = reasoning
        return {"index": index, "message": msg, "logprobs": logprobs, "finish_reason": finish_reason, "stop_reason": stop_reason}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason, "stop_reason": stop_reason}


# -- streamed responses -----------------------------------------------------------------------


class ChunkShape:
    """Pre-built SSE fragments of one streamed response: the hot path only splices text in.

    ``event(text)`` is one ``data:`` event with a text (completions) or a
    ``content``/``reasoning_content`` delta (chat); ``finish`` puts the
    finish_reason on it, as vLLM puts it on the last token's event.
    """

    def __init__(self, rid: str, created: int, model: str, chat: bool, finish_reason: str) -> None:
        self.rid = rid
        self.created = created
        self.model = model
        self.chat = chat
        self.object = "chat.completion.chunk" if chat else "text_completion"
        if chat:
            self._head = f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},"model":{json.dumps(model)},"choices":[{{"index":0,"delta":{{'
            self._tail = '},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._head = f'data: {{"id":"{rid}","object":"text_completion","created":{created},"model":{json.dumps(model)},"choices":[{{"index":0,"text":'
            self._tail = ',"logprobs":null,"finish_reason":null}]}\n\n'
        self._tail_fin = self._tail.replace('"finish_reason":null', f'"finish_reason":"{finish_reason}"')

    def role(self) -> str:
        """Chat's opening event: the assistant role with empty content (as vLLM's)."""
        return self._head + '"role":"assistant","content":""' + self._tail

    def event(self, text: str, *, reasoning: bool = False, finish: bool = False) -> str:
        tail = self._tail_fin if finish else self._tail
        if not self.chat:
            return self._head + json.dumps(text) + tail
        key = "reasoning_content" if reasoning else "content"
        return self._head + f'"{key}":' + json.dumps(text) + tail

    def chunk(self, choices: list[dict[str, Any]], usage_obj: dict[str, Any] | None = None) -> str:
        """A general event: any choices (see ``stream_choice``), usage when given."""
        obj: dict[str, Any] = {"id": self.rid, "object": self.object, "created": self.created, "model": self.model, "choices": choices}
        if usage_obj is not None:
            obj["usage"] = usage_obj
        return "data: " + json.dumps(obj) + "\n\n"

    def usage_event(self, usage_obj: dict[str, Any]) -> str:
        """The closing usage chunk (``stream_options.include_usage``): no choices."""
        return self.chunk([], usage_obj)


def stream_choice(chat: bool, index: int, text: str | None, *, reasoning: bool = False, role: bool = False, finish_reason: str | None = None, stop_reason: str | None = None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One choice of a streamed chunk."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["reasoning_content" if reasoning else "content"] = text
        c: dict[str, Any] = {"index": index, "delta": delta}
    else:
        c = {"index": index, "text": text or ""}
    c["logprobs"] = logprobs
    c["finish_reason"] = finish_reason
    if finish_reason is not None:
        c["stop_reason"] = stop_reason
    return c


STREAM_ERROR_EVENT = 'data: {"error": {"message": "injected fault: in-stream error", "type": "server_error", "param": null, "code": 500}}\n\n'
MALFORMED_EVENT = 'data: {"id": "malformed", "choices": [\n\n'
DONE_EVENT = "data: [DONE]\n\n"
