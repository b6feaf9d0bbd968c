"""The OpenAI request protocol of the reference server: what a request may say and means.

Kept apart from ``server`` (routes, streaming, auth, faults, metrics) so the
wire format lives in one place; ``responses`` builds what goes back. Every
field is read through ``fields.Fields`` (one strict reader per type), so a
request vLLM's OpenAI server refuses with a 400 naming the field is refused
here the same way. Sampling fields the synthetic text cannot use
(``temperature``, ``top_p``, penalties, ...) are still checked, so a client's
mistake shows here as it would on vLLM; features the reference engine cannot
honour (structured output, tool calls) are refused by name, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from burstbench.backends.reference.fields import INT64, FieldError, Fields, parse_json
from burstbench.backends.reference.tokens import id_word

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MAX_STOP = 64
MAX_STOP_LEN = 1024
MAX_TOOLS = 256
ROLES = ("system", "user", "assistant", "tool", "developer", "function")

BadRequest = FieldError  # the server answers it with ``status`` (400 unless said otherwise)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or ``BadRequest``."""
    body = parse_json(raw)
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


@dataclass(frozen=True)
class Prompt:
    """A prompt as the engine counts it: whitespace words (or token ids), and its text."""

    words: list[str]
    text: str  # what ``echo`` repeats (completions: the prompt; chat: a last assistant message)
    ids: tuple[int, ...] | None = None  # the token ids, when the prompt was given as ids

    @property
    def n(self) -> int:
        return len(self.words)


def chat_prompt(body: dict[str, Any]) -> Prompt:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    words: list[str] = []
    last = ""
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object", param="messages")
        if Fields(m, f"messages[{i}].").enum("role", ROLES) is None:
            raise BadRequest(f"messages[{i}].role is required (one of {', '.join(ROLES)})", param=f"messages[{i}].role")
        text = _text_of(m.get("content"), f"messages[{i}].content")
        words.extend(text.split())
        last = text if m.get("role") == "assistant" else ""
    return Prompt(words, last)


def completion_prompt(body: dict[str, Any], vocab_size: int) -> Prompt:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) == 0:
            raise BadRequest("'prompt' must not be empty", param="prompt")
        if all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
            if not all(0 <= x < vocab_size for x in prompt):
                raise BadRequest(f"'prompt' token ids must be in [0, {vocab_size - 1}] (the model's vocabulary)", param="prompt")
            return Prompt([str(x) for x in prompt], " ".join(id_word(x) for x in prompt), tuple(prompt))
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise BadRequest("'prompt' must be a string, a list of token ids, or a list of one string (batched prompts are not supported: send one per request)", param="prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string, a list of token ids, or a list of one string", param="prompt")
    return Prompt(prompt.split(), prompt)


@dataclass(frozen=True)
class GenRequest:
    """What a completion or chat request asks the engine for, validated."""

    chat: bool
    prompt: Prompt
    stream: bool
    n: int
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    include_usage: bool
    continuous_usage: bool
    seed: int | None
    temperature: float | None
    priority: int
    stop: tuple[str, ...]
    include_stop: bool
    logprobs: int | None  # top alternatives per token; None: no logprobs
    echo: bool

    @property
    def n_prompt(self) -> int:
        return self.prompt.n

    @property
    def words(self) -> list[str]:
        return self.prompt.words

    @property
    def plain(self) -> bool:
        """Nothing but text: the server's fast streaming path can write it."""
        return self.n == 1 and not self.stop and self.logprobs is None and not self.echo and not self.continuous_usage


def _served(f: Fields, name: str) -> None:
    """A request for another model is a 404 (as vLLM's ``model_not_found``)."""
    model = f.str("model", max_len=1024)
    if model is not None and model != name:
        raise BadRequest(f"The model `{model}` does not exist.", param="model", code="model_not_found", status=404)


def _sampling(f: Fields, vocab_size: int) -> None:
    """Sampling fields the synthetic text does not use, checked as vLLM checks them."""
    f.float("top_p", 0.0, 1.0, lo_open=True)
    f.int("top_k", -1, vocab_size)
    f.float("min_p", 0.0, 1.0)
    f.float("presence_penalty", -2.0, 2.0)
    f.float("frequency_penalty", -2.0, 2.0)
    f.float("repetition_penalty", 0.0, float("inf"), lo_open=True)
    f.float("length_penalty", float("-inf"), float("inf"))
    f.object("logit_bias")
    f.str("user")


def _unsupported(f: Fields, chat: bool) -> None:
    """Features the reference engine cannot honour: a 400 naming them (vLLM would honour them)."""
    rf = f.object("response_format")
    if rf is not None:
        kind = rf.enum("type", ("text", "json_object", "json_schema", "structural_tag"), default="text")
        if kind != "text":
            raise BadRequest(f"response_format type '{kind}' is not supported: the reference engine writes synthetic words and cannot follow a schema", param="response_format")
    for key in ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs"):
        if f.has(key):
            raise BadRequest(f"'{key}' is not supported: the reference engine writes synthetic words and cannot constrain them", param=key)
    if f.has("prompt_logprobs"):
        raise BadRequest("'prompt_logprobs' is not supported by the reference engine", param="prompt_logprobs")
    if not chat:
        return
    tools = f.list("tools", MAX_TOOLS)
    choice = f.raw("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise BadRequest("'tool_choice' must be 'none', 'auto', 'required' or an object naming a function", param="tool_choice")
    if isinstance(choice, str):
        f.enum("tool_choice", ("none", "auto", "required"))
    if not tools:
        if choice not in (None, "none"):
            raise BadRequest("When using `tool_choice`, `tools` must be set.", param="tool_choice")
        return
    effective = "auto" if choice is None else choice
    if effective != "none":
        shown = effective if isinstance(effective, str) else "a named function"
        raise BadRequest(
            f"tool_choice {shown!r} is not supported: the reference engine cannot call tools (as vLLM without --enable-auto-tool-choice); send tool_choice 'none' or no tools",
            param="tool_choice",
        )


def parse_generation(body: dict[str, Any], *, chat: bool, name: str, max_context: int, vocab_size: int = 1 << 20, max_n: int = 256, priority_policy: bool = False) -> GenRequest:
    """Validate a completion (``chat=False``) or chat request against the served model."""
    f = Fields(body)
    _served(f, name)
    prompt = chat_prompt(body) if chat else completion_prompt(body, vocab_size)
    stream = f.bool("stream")
    opts = f.object("stream_options")
    if opts is not None and not stream:
        raise BadRequest("Stream options can only be defined when `stream=True`.", param="stream_options")
    include_usage = opts.bool("include_usage") if opts is not None else False
    continuous = opts.bool("continuous_usage_stats") if opts is not None else False
    n = f.int("n", 1, max_n, default=1)
    assert n is not None
    best_of = f.int("best_of", 1, max_n)
    if best_of is not None and best_of != n:
        raise BadRequest("'best_of' other than n is not supported (as in vLLM V1)", param="best_of")
    field_name = "max_completion_tokens" if chat and f.has("max_completion_tokens") else "max_tokens"
    max_tokens = f.int(field_name, 1, max_context)
    if prompt.n < 1:
        raise BadRequest("the prompt must contain at least one token (word)", param="messages" if chat else "prompt")
    if max_tokens is None:
        max_tokens = max(1, max_context - prompt.n)
    if prompt.n + max_tokens > max_context:
        raise BadRequest(
            f"This model's maximum context length is {max_context} tokens. However, you requested "
            f"{prompt.n + max_tokens} tokens ({prompt.n} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param=field_name,
            code="context_length_exceeded",
        )
    min_tokens = f.int("min_tokens", 0, max_tokens, default=0)
    temperature = f.float("temperature", 0.0, float("inf"))
    seed = f.int("seed", *INT64)
    priority = f.int("priority", *INT64, default=0)
    if priority and not priority_policy:
        raise BadRequest(f"Got priority {priority} but priority scheduling is not enabled (serve --policy priority).", param="priority")
    if chat:
        top = f.int("top_logprobs", 0, MAX_LOGPROBS)
        logprobs = (top or 0) if f.bool("logprobs") else None
        if top is not None and logprobs is None:
            raise BadRequest("when using `top_logprobs`, `logprobs` must be set to true.", param="top_logprobs")
    else:
        logprobs = f.int("logprobs", 0, MAX_LOGPROBS)
    _sampling(f, vocab_size)
    _unsupported(f, chat)
    assert min_tokens is not None and priority is not None
    return GenRequest(
        chat=chat,
        prompt=prompt,
        stream=stream,
        n=n,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=f.bool("ignore_eos"),
        include_usage=include_usage if stream else True,
        continuous_usage=continuous and include_usage and stream,
        seed=seed,
        temperature=temperature,
        priority=priority,
        stop=f.strings("stop", MAX_STOP, MAX_STOP_LEN),
        include_stop=f.bool("include_stop_str_in_output"),
        logprobs=logprobs,
        echo=f.bool("echo"),
    )


def parse_tokenize(body: dict[str, Any], *, name: str, vocab_size: int) -> Prompt:
    """``/tokenize``: ``{"prompt": ...}`` or ``{"messages": [...]}`` (vLLM's two forms)."""
    f = Fields(body)
    _served(f, name)
    f.bool("add_special_tokens")
    f.bool("return_token_strs")
    if "messages" in body:
        return chat_prompt(body)
    return completion_prompt(body, vocab_size)


def parse_detokenize(body: dict[str, Any], *, name: str, vocab_size: int, max_tokens: int) -> list[int]:
    """``/detokenize``: ``{"tokens": [ids]}``."""
    f = Fields(body)
    _served(f, name)
    tokens = f.list("tokens", max_tokens)
    if tokens is None or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in tokens):
        raise BadRequest(f"'tokens' must be a list of token ids in [0, {vocab_size - 1}]", param="tokens")
    return tokens
