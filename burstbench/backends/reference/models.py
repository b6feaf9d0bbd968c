"""Model configurations for the reference engine: what a model costs to hold and to run.

The engine never runs a model; it only needs the numbers a serving engine pays for:
bytes of weights (what one decode step must stream from memory), bytes of KV cache per
token (what bounds the batch), and FLOPs per token (what bounds a prefill). All of them
follow from a Hugging Face ``config.json``: Llama-style dense decoders (GQA, SwiGLU),
Mixtral-style and DeepSeek-V3-style mixture-of-experts (active vs total parameters,
shared experts, leading dense layers) and DeepSeek's multi-head latent attention (MLA),
whose KV cache holds one compressed latent per token per layer instead of K and V heads.

Presets live in ``burstbench/data/models/*.json`` as the published ``config.json`` of each
model (architecture fields only) plus a ``burstbench`` block with the preset name, the
reasoning flag and the provenance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from burstbench.backends.hardware.profile import read_json_file
from burstbench.errors import InputError, UsageError

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}
"""Bytes per element of each storage dtype the engine understands."""

_DTYPE_ALIASES = {
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "auto": "bf16",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "float8": "fp8",
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder-only model, in the units a serving engine pays.

    ``head_dim`` is the query/key head size; ``v_head_dim`` (0: same as ``head_dim``) the
    value head size. MoE models set ``num_experts`` > 0: every MoE layer holds
    ``num_experts`` routed experts of ``moe_intermediate_size`` plus ``shared_experts``
    always-active ones, and the first ``first_dense_layers`` layers use a dense MLP of
    ``intermediate_size`` (DeepSeek-V3's ``first_k_dense_replace``). MLA models set
    ``kv_lora_rank`` > 0: their KV cache stores ``kv_lora_rank + qk_rope_head_dim`` values
    per token per layer, replicated on every tensor-parallel rank.
    """

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context: int
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_experts: int = 0
    weight_bytes_per_param: float = 2.0
    kv_bytes_per_elem: float = 2.0
    reasoning: bool = False
    tie_word_embeddings: bool = False
    first_dense_layers: int = 0
    v_head_dim: int = 0
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    attention_bias: bool = False

    # --- structure -------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def value_head_dim(self) -> int:
        return self.v_head_dim or self.head_dim

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers if self.is_moe else 0

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    # --- parameters ------------------------------------------------------------------
    @property
    def attention_params_per_layer(self) -> int:
        """Projection weights of one attention block (norm weights included)."""
        h, nh = self.hidden_size, self.num_heads
        if self.is_mla:
            qk = self.head_dim  # nope + rope
            if self.q_lora_rank:
                q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * nh * qk
            else:
                q = h * nh * qk
            nope = self.head_dim - self.qk_rope_head_dim
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
            kv_b = self.kv_lora_rank * nh * (nope + self.value_head_dim)
            o = nh * self.value_head_dim * h
            return q + kv_a + kv_b + o + h
        q = h * nh * self.head_dim
        kv = 2 * h * self.num_kv_heads * self.head_dim
        o = nh * self.value_head_dim * h
        bias = (nh + 2 * self.num_kv_heads) * self.head_dim if self.attention_bias else 0
        return q + kv + o + h + bias

    @property
    def dense_mlp_params(self) -> int:
        """SwiGLU MLP (gate, up, down) of a dense layer, with its norm."""
        return 3 * self.hidden_size * self.intermediate_size + self.hidden_size

    @property
    def expert_params(self) -> int:
        """One routed (or shared) expert: a SwiGLU MLP of ``moe_intermediate_size``."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def _params(self, experts: int) -> int:
        """Parameters with ``experts`` routed experts per MoE layer (embedding and head included)."""
        moe = self.num_moe_layers * (
            (experts + self.shared_experts) * self.expert_params
            + self.hidden_size * self.num_experts  # router
            + self.hidden_size
        )
        return (
            self.num_layers * self.attention_params_per_layer
            + self.num_dense_layers * self.dense_mlp_params
            + moe
            + self.embedding_params
            + self.lm_head_params
            + self.hidden_size
        )

    @property
    def total_params(self) -> int:
        """Every parameter held in memory (all experts), embedding and head included."""
        return self._params(self.num_experts)

    @property
    def active_params(self) -> int:
        """Parameters one token touches (routed experts: ``experts_per_token`` of them)."""
        return self._params(self.experts_per_token)

    @property
    def weight_bytes(self) -> float:
        """Bytes of weights in device memory (all of them, across all TP ranks)."""
        return self.total_params * self.weight_bytes_per_param

    # --- KV cache and FLOPs ----------------------------------------------------------
    @property
    def kv_elems_per_token_per_layer(self) -> int:
        """Cached values per token per layer: K and V heads, or MLA's latent + rope key."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return self.num_kv_heads * (self.head_dim + self.value_head_dim)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token: 2·layers·kv_heads·head_dim·bytes for standard attention."""
        return round(self.num_layers * self.kv_elems_per_token_per_layer * self.kv_bytes_per_elem)

    @property
    def attention_flops_per_pair(self) -> int:
        """FLOPs of one (query token, key token) pair over all layers: QKᵀ plus PV.

        MLA is counted in its absorbed form (what vLLM runs for decode): scores over the
        ``kv_lora_rank + rope`` latent and values of ``kv_lora_rank``.
        """
        if self.is_mla:
            qk = self.kv_lora_rank + self.qk_rope_head_dim
            v = self.kv_lora_rank
        else:
            qk, v = self.head_dim, self.value_head_dim
        return 2 * self.num_layers * self.num_heads * (qk + v)

    def flops_per_token(self, context: int = 0) -> float:
        """Forward FLOPs for one new token attending to ``context`` earlier tokens.

        2 FLOPs per active weight (embedding lookup excluded, head included) plus attention
        to ``context + 1`` keys.
        """
        linear = 2 * (self.active_params - self.embedding_params)
        if self.tie_word_embeddings:
            linear += 2 * self.embedding_params
        return float(linear + self.attention_flops_per_pair * (context + 1))

    def with_dtypes(self, weight_dtype: str | None = None, kv_dtype: str | None = None) -> ModelConfig:
        """The same architecture stored with other weight and/or KV-cache dtypes."""
        w = _dtype(weight_dtype, "weight_dtype") if weight_dtype else self.weight_dtype
        k = _dtype(kv_dtype, "kv_dtype") if kv_dtype else self.kv_dtype
        return replace(
            self,
            weight_dtype=w,
            kv_dtype=k,
            weight_bytes_per_param=DTYPE_BYTES[w],
            kv_bytes_per_elem=DTYPE_BYTES[k],
        )


# --- loading --------------------------------------------------------------------------


def _presets_dir() -> Path:
    return Path(str(resources.files("burstbench") / "data" / "models"))


@cache
def _preset_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in _presets_dir().glob("*.json")))


def list_models() -> list[str]:
    """Names of the bundled presets (``load_model`` accepts each)."""
    return list(_preset_names())


_HUB_SUFFIX = re.compile(r"-(hf|instruct|chat|it|base|v\d+(\.\d+)*)$")


def preset_name(name: str) -> str | None:
    """The bundled preset a model name means, or None.

    Accepts preset names and Hugging Face ids as traces and OpenAI requests carry them:
    ``meta-llama/Meta-Llama-3.1-8B-Instruct`` → ``llama-3.1-8b``,
    ``mistralai/Mixtral-8x7B-Instruct-v0.1`` → ``mixtral-8x7b`` (organisation, ``Meta-``
    prefix and ``-Instruct``/``-chat``/``-hf``/version suffixes dropped).
    """
    presets = _preset_names()
    key = name.strip().lower()
    if key in presets:
        return key
    key = key.rsplit("/", 1)[-1].removeprefix("meta-")
    while key not in presets:  # drop one suffix at a time: DeepSeek-V3 keeps its "-v3"
        stripped = _HUB_SUFFIX.sub("", key)
        if stripped == key:
            return None
        key = stripped
    return key


def _dtype(name: str, field: str) -> str:
    key = str(name).strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        raise UsageError(
            f"unknown {field} '{name}'; use one of {', '.join(sorted(DTYPE_BYTES))}"
        )
    return key


def load_model(
    name_or_path: str | Path,
    *,
    weight_dtype: str | None = None,
    kv_dtype: str | None = None,
) -> ModelConfig:
    """A preset by name (see ``list_models``) or a local Hugging Face ``config.json``.

    ``weight_dtype`` defaults to what the config ships (``quantization_config`` fp8, else
    ``torch_dtype``, else bf16); ``kv_dtype`` defaults to bf16 (vLLM's ``kv_cache_dtype
    auto`` for bf16 models) unless given. A malformed file raises ``InputError`` naming
    the field.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"  # a downloaded model folder
    if not path.is_file():
        preset = preset_name(text)
        if preset is not None:
            path = _presets_dir() / f"{preset}.json"
        elif path.suffix == ".json" or path.is_dir() or text.startswith(("/", ".", "~")):
            raise InputError("no such model config file; give a config.json path", path=text)
        else:
            raise UsageError(
                f"unknown model '{text}'; use a local config.json (or model folder) or one of: "
                + ", ".join(list_models())
            )
    raw = read_json_file(path)
    if not isinstance(raw, dict):
        raise InputError("expected a JSON object (a Hugging Face config.json)", path=path)
    return parse_hf_config(raw, source=path, weight_dtype=weight_dtype, kv_dtype=kv_dtype)


def _int(raw: dict[str, Any], key: str, path: Path | str, default: int | None = None) -> int:
    value = raw.get(key, default)
    if value is None:
        raise InputError("missing; a Hugging Face config.json must give it", path=path, field=key)
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise InputError(f"must be an integer, got {value!r}", path=path, field=key)
    if value < 0:
        raise InputError(f"must not be negative, got {value}", path=path, field=key)
    return int(value)


def _positive(raw: dict[str, Any], key: str, path: Path | str, default: int | None = None) -> int:
    value = _int(raw, key, path, default)
    if value <= 0:
        raise InputError(f"must be positive, got {value}", path=path, field=key)
    return value


def parse_hf_config(
    raw: dict[str, Any],
    *,
    source: Path | str = "<config>",
    weight_dtype: str | None = None,
    kv_dtype: str | None = None,
) -> ModelConfig:
    """Build a ``ModelConfig`` from a parsed Hugging Face ``config.json``."""
    text_config = raw.get("text_config")
    if "hidden_size" not in raw and isinstance(text_config, dict):
        # multimodal configs (Llama 4, Qwen2-VL, ...): the language model is what is served
        raw = {**text_config, "burstbench": raw.get("burstbench"), "torch_dtype": raw.get("torch_dtype")}
    meta = raw.get("burstbench") or {}
    if not isinstance(meta, dict):
        raise InputError("must be an object", path=source, field="burstbench")
    hidden = _positive(raw, "hidden_size", source)
    layers = _positive(raw, "num_hidden_layers", source)
    heads = _positive(raw, "num_attention_heads", source)
    kv_heads = _positive(raw, "num_key_value_heads", source, heads)
    if heads % kv_heads:
        raise InputError(
            f"num_attention_heads ({heads}) must be a multiple of it ({kv_heads})",
            path=source,
            field="num_key_value_heads",
        )
    kv_lora = _int(raw, "kv_lora_rank", source, 0)
    rope = _int(raw, "qk_rope_head_dim", source, 0)
    if kv_lora:
        head_dim = _positive(raw, "qk_nope_head_dim", source) + rope
        v_head = _positive(raw, "v_head_dim", source)
    else:
        if raw.get("head_dim") is None and hidden % heads:
            raise InputError(
                f"hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads}); "
                "give head_dim",
                path=source,
                field="head_dim",
            )
        head_dim = _positive(raw, "head_dim", source, hidden // heads)
        v_head = 0
    inter = _positive(raw, "intermediate_size", source)
    vocab = _positive(raw, "vocab_size", source)
    max_ctx = _positive(raw, "max_position_embeddings", source, 4096)

    experts = _int(raw, "n_routed_experts", source, None) if "n_routed_experts" in raw else None
    if experts is None:
        experts = _int(raw, "num_local_experts", source, _int(raw, "num_experts", source, 0))
    per_tok = _int(raw, "num_experts_per_tok", source, 0) if experts else 0
    moe_inter = _int(raw, "moe_intermediate_size", source, inter) if experts else 0
    shared = _int(raw, "n_shared_experts", source, 0) if experts else 0
    shared_inter = _int(raw, "shared_expert_intermediate_size", source, 0) if experts else 0
    if shared_inter and not shared and moe_inter:
        # Qwen-MoE: one shared expert of its own width, counted in routed-expert units
        shared = max(1, round(shared_inter / moe_inter))
    first_dense = _int(raw, "first_k_dense_replace", source, 0) if experts else 0
    if experts:
        if per_tok <= 0 or per_tok > experts:
            raise InputError(
                f"must be between 1 and the expert count ({experts}), got {per_tok}",
                path=source,
                field="num_experts_per_tok",
            )
        if first_dense > layers:
            raise InputError(
                f"exceeds num_hidden_layers ({layers})", path=source, field="first_k_dense_replace"
            )

    tie = raw.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise InputError(f"must be true or false, got {tie!r}", path=source, field="tie_word_embeddings")

    if weight_dtype is None:
        quant = raw.get("quantization_config")
        if isinstance(quant, dict) and str(quant.get("quant_method", "")).lower() == "fp8":
            weight_dtype = "fp8"
        else:
            torch_dtype = raw.get("torch_dtype") or "bf16"
            if not isinstance(torch_dtype, str):
                raise InputError(f"must be a string, got {torch_dtype!r}", path=source, field="torch_dtype")
            try:
                weight_dtype = _dtype(torch_dtype, "torch_dtype")
            except UsageError as exc:
                raise InputError(str(exc), path=source, field="torch_dtype") from exc
    w = _dtype(weight_dtype, "weight_dtype")
    k = _dtype(kv_dtype, "kv_dtype") if kv_dtype else ("fp16" if w == "fp16" else "bf16")

    name = meta.get("name") or raw.get("_name_or_path") or Path(str(source)).parent.name or "model"
    reasoning = meta.get("reasoning", False)
    if not isinstance(reasoning, bool):
        raise InputError(f"must be true or false, got {reasoning!r}", path=source, field="burstbench.reasoning")
    return ModelConfig(
        name=str(name),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=vocab,
        max_context=max_ctx,
        num_experts=experts,
        experts_per_token=per_tok,
        moe_intermediate_size=moe_inter,
        shared_experts=shared,
        weight_bytes_per_param=DTYPE_BYTES[w],
        kv_bytes_per_elem=DTYPE_BYTES[k],
        reasoning=reasoning,
        tie_word_embeddings=tie,
        first_dense_layers=first_dense,
        v_head_dim=v_head,
        kv_lora_rank=kv_lora,
        q_lora_rank=_int(raw, "q_lora_rank", source, 0) if kv_lora else 0,
        qk_rope_head_dim=rope if kv_lora else 0,
        weight_dtype=w,
        kv_dtype=k,
        attention_bias=_attention_bias(raw, source),
    )


def _attention_bias(raw: dict[str, Any], source: Path | str) -> bool:
    """Q/K/V projection biases: Qwen2 always has them; others say ``attention_bias``."""
    value = raw.get("attention_bias", raw.get("model_type") in ("qwen2", "qwen2_moe"))
    if not isinstance(value, bool):
        raise InputError(f"must be true or false, got {value!r}", path=source, field="attention_bias")
    return value
