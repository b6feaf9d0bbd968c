"""The OpenAI request protocol of the reference server: parsing, validation, response shapes.

Kept apart from ``server`` (routes, streaming, auth, faults, metrics) so the wire
format lives in one place: what a request may say, what it means to the engine
(``GenRequest``), and the exact JSON a client gets back (bodies, SSE chunks,
errors). Nothing here touches the engine or the event loop.

Error bodies follow vLLM's OpenAI server: ``{"error": {"message", "type",
"param", "code"}}``; a request the server cannot take raises ``BadRequest``,
which the server answers with 400 (or the error's ``status``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web


class BadRequest(Exception):
    """A request the server refuses; ``param`` names the field at fault (as vLLM's ``param``)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


def error_body(message: str, *, etype: str = "invalid_request_error", param: str | None = None, code: Any = None) -> dict[str, Any]:
    """vLLM's (and OpenAI's) error object."""
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


def error(status: int, message: str, *, etype: str = "invalid_request_error", param: str | None = None, code: Any = None, headers: dict[str, str] | None = None) -> web.Response:
    """An error response with ``error_body``."""
    return web.json_response(error_body(message, etype=etype, param=param, code=code), status=status, headers=headers)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or ``BadRequest``."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif isinstance(p, str):
                parts.append(p)
        return " ".join(parts)
    raise BadRequest(f"{where} must be a string or a list of content parts", param=where)


def prompt_words(body: dict[str, Any], chat: bool) -> tuple[int, list[str]]:
    """Prompt tokens and words (words feed the prefix-cache hashes)."""
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("'messages' must be a non-empty list", param="messages")
        words: list[str] = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise BadRequest(f"messages[{i}] must be an object", param="messages")
            words.extend(_text_of(m.get("content"), f"messages[{i}].content").split())
        return len(words), words
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) == 0:
            raise BadRequest("'prompt' must not be empty", param="prompt")
        if all(isinstance(x, int) for x in prompt):
            return len(prompt), [str(x) for x in prompt]
        if len(prompt) != 1:
            raise BadRequest("batched prompts are not supported; send one prompt per request", param="prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string", param="prompt")
    words = prompt.split()
    return len(words), words


@dataclass
class GenRequest:
    """What a completion or chat request asks the engine for."""

    chat: bool
    n_prompt: int
    words: list[str]
    stream: bool
    max_tokens: int
    ignore_eos: bool
    include_usage: bool
    seed: int | None
    priority: int


def parse_generation(body: dict[str, Any], *, chat: bool, name: str, max_context: int) -> GenRequest:
    """Validate a completion (``chat=False``) or chat request against the served model."""
    model = body.get("model")
    if model is not None and model != name:
        raise BadRequest(f"The model `{model}` does not exist.", param="model", code="model_not_found", status=404)
    n_prompt, words = prompt_words(body, chat)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", param="n")
    field_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(field_name)
    if max_tokens is None:
        max_tokens = max_context - n_prompt
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"'{field_name}' must be an integer >= 1, got {max_tokens!r}", param=field_name)
    if n_prompt < 1:
        raise BadRequest("the prompt must contain at least one token (word)", param="messages" if chat else "prompt")
    if n_prompt + max_tokens > max_context:
        raise BadRequest(
            f"This model's maximum context length is {max_context} tokens. However, you requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param=field_name,
            code="context_length_exceeded",
        )
    ignore_eos = bool(body.get("ignore_eos", False))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage", False)) if stream else True
    prio = body.get("priority", 0)
    priority = prio if isinstance(prio, int) and not isinstance(prio, bool) else 0
    return GenRequest(chat, n_prompt, words, stream, max_tokens, ignore_eos, include_usage, body.get("seed"), priority)


# -- response shapes -----------------------------------------------------------------------


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


def choice(chat: bool, text: str, finish_reason: str | None, *, reasoning: str | None = None, index: int = 0) -> dict[str, Any]:
    """One choice of a whole response."""
    if chat:
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning:
            msg["reasoning_content"] = reasoning
        return {"index": index, "message": msg, "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


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

    def usage_event(self, usage_obj: dict[str, Any]) -> str:
        """The closing usage chunk (``stream_options.include_usage``): no choices."""
        obj = {"id": self.rid, "object": self.object, "created": self.created, "model": self.model, "choices": [], "usage": usage_obj}
        return "data: " + json.dumps(obj) + "\n\n"


STREAM_ERROR_EVENT = 'data: {"error": {"message": "injected fault: in-stream error", "type": "server_error", "param": null, "code": 500}}\n\n'
MALFORMED_EVENT = 'data: {"id": "malformed", "choices": [\n\n'
DONE_EVENT = "data: [DONE]\n\n"
