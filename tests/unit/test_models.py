"""Model configs: presets against published parameter counts, HF config parsing, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from burstbench.backends.reference.models import ModelConfig, list_models, load_model
from burstbench.errors import InputError, UsageError

# Published parameter counts (model cards / papers), in billions: (total, active).
PUBLISHED = {
    "llama-3.1-8b": (8.03, 8.03),
    "llama-3.1-70b": (70.6, 70.6),
    "llama-2-7b": (6.74, 6.74),
    "qwen2.5-7b": (7.61, 7.61),
    "qwen2.5-32b": (32.5, 32.5),  # Qwen2.5 report: 32.5B (HF card shows 32.8B with biases)
    "deepseek-r1-distill-qwen-7b": (7.61, 7.61),
    "mixtral-8x7b": (46.7, 12.9),  # Mistral AI: 46.7B total, 12.9B per token
    "deepseek-v3": (671.0, 37.0),  # DeepSeek-V3 report: 671B total, 37B activated
}


def test_every_issue_preset_is_bundled() -> None:
    names = set(list_models())
    for want in [
        "llama-3.1-8b", "llama-3.1-70b", "llama-2-7b", "qwen2.5-7b", "qwen2.5-32b",
        "deepseek-r1-distill-qwen-7b", "deepseek-r1-distill-qwen-32b", "mixtral-8x7b",
        "deepseek-v3",
    ]:
        assert want in names


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name: str) -> None:
    m = load_model(name)
    total, active = PUBLISHED[name]
    assert m.total_params / 1e9 == pytest.approx(total, rel=0.02)
    assert m.active_params / 1e9 == pytest.approx(active, rel=0.03)


def test_kv_bytes_per_token_follows_the_gqa_formula() -> None:
    m = load_model("llama-3.1-8b")
    # 2 (K and V) · 32 layers · 8 KV heads · 128 head dim · 2 bytes = 128 KiB per token
    assert m.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    l2 = load_model("llama-2-7b")  # no GQA: 32 KV heads -> 512 KiB per token
    assert l2.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2


def test_mla_caches_one_latent_per_token_per_layer() -> None:
    m = load_model("deepseek-v3")
    # kv_lora_rank 512 + rope key 64 per layer, 61 layers, bf16 KV
    assert m.is_mla and m.kv_bytes_per_token == 61 * (512 + 64) * 2
    # fp8 weights as shipped (quantization_config), so weight bytes == parameter count
    assert m.weight_dtype == "fp8"
    assert m.weight_bytes == pytest.approx(m.total_params)


def test_dtypes_change_bytes_not_architecture() -> None:
    bf16 = load_model("llama-3.1-8b")
    fp8 = load_model("llama-3.1-8b", weight_dtype="fp8", kv_dtype="fp8")
    assert fp8.weight_bytes == pytest.approx(bf16.weight_bytes / 2)
    assert fp8.kv_bytes_per_token == bf16.kv_bytes_per_token // 2
    assert fp8.total_params == bf16.total_params
    int8 = load_model("llama-3.1-8b", weight_dtype="int8")
    assert int8.weight_bytes_per_param == 1.0 and int8.kv_bytes_per_elem == 2.0
    with pytest.raises(UsageError, match="weight_dtype"):
        load_model("llama-3.1-8b", weight_dtype="fp7")


def test_flops_per_token_is_twice_the_weights_plus_attention() -> None:
    m = load_model("llama-3.1-8b")
    # Rule of thumb (Kaplan et al.): about 2 FLOPs per non-embedding parameter.
    non_embedding = m.total_params - m.vocab_size * m.hidden_size
    assert m.flops_per_token(0) == pytest.approx(2 * non_embedding, rel=0.01)
    # Each extra context token adds QK and PV: 4 · layers · heads · head_dim FLOPs.
    step = m.flops_per_token(1001) - m.flops_per_token(1000)
    assert step == pytest.approx(4 * 32 * 32 * 128)


def test_reasoning_flag_on_r1_distills_only() -> None:
    assert load_model("deepseek-r1-distill-qwen-7b").reasoning
    assert load_model("deepseek-r1-distill-qwen-32b").reasoning
    assert not load_model("qwen2.5-7b").reasoning


def test_mixtral_is_moe_with_active_below_total() -> None:
    m = load_model("mixtral-8x7b")
    assert (m.num_experts, m.experts_per_token) == (8, 2)
    assert m.active_params < m.total_params / 3


def _write(tmp_path: Path, cfg: dict | str, name: str = "config.json") -> Path:
    p = tmp_path / name
    p.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg, indent=2))
    return p


TINY = {
    "hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
    "num_key_value_heads": 2, "intermediate_size": 1536, "vocab_size": 1000,
    "max_position_embeddings": 2048, "torch_dtype": "float16",
}


def test_local_hf_config_loads(tmp_path: Path) -> None:
    m = load_model(str(_write(tmp_path, TINY)))
    assert isinstance(m, ModelConfig)
    assert m.head_dim == 64 and m.num_kv_heads == 2 and m.weight_dtype == "fp16"
    # embedding + head 2·1000·512, per layer q,o 2·512² + k,v 2·512·128 + MLP 3·512·1536 (+norms)
    expected = 2 * 1000 * 512 + 4 * (2 * 512 * 512 + 2 * 512 * 128 + 3 * 512 * 1536 + 2 * 512) + 512
    assert m.total_params == expected


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"hidden_size": None}, "hidden_size"),
        ({"num_hidden_layers": "32"}, "num_hidden_layers"),
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"intermediate_size": -5}, "intermediate_size"),
        ({"vocab_size": 12.5}, "vocab_size"),
        ({"hidden_size": 500}, "head_dim"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
        ({"torch_dtype": "float7"}, "torch_dtype"),
        ({"num_local_experts": 8, "num_experts_per_tok": 9}, "num_experts_per_tok"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, patch: dict, field: str) -> None:
    cfg = {k: v for k, v in {**TINY, **patch}.items() if v is not None}
    path = _write(tmp_path, cfg)
    with pytest.raises(InputError) as err:
        load_model(str(path))
    assert f"field '{field}'" in str(err.value)
    assert str(path) in str(err.value)


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, '{\n  "hidden_size": 4096,\n  "num_hidden_layers": ,\n}')
    with pytest.raises(InputError, match=r"config\.json:3"):
        load_model(str(path))
    with pytest.raises(InputError, match="JSON object"):
        load_model(str(_write(tmp_path, "[1, 2]", "list.json")))
    with pytest.raises(InputError, match="not valid JSON"):
        load_model(str(_write(tmp_path, "", "empty.json")))


def test_missing_file_and_unknown_preset() -> None:
    with pytest.raises(InputError, match="no such model config"):
        load_model("/nonexistent/config.json")
    with pytest.raises(UsageError, match=r"llama-3\.1-8b"):
        load_model("gpt-17")


def test_qwen_moe_shared_expert_and_published_counts(tmp_path: Path) -> None:
    # Qwen1.5-MoE-A2.7B's config.json: published as 14.3B total, 2.7B activated.
    cfg = {
        "model_type": "qwen2_moe", "hidden_size": 2048, "num_hidden_layers": 24,
        "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 5632,
        "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
        "num_experts": 60, "num_experts_per_tok": 4, "vocab_size": 151936,
        "max_position_embeddings": 8192, "torch_dtype": "bfloat16",
    }
    m = load_model(str(_write(tmp_path, cfg)))
    assert m.shared_experts == 4 and m.attention_bias
    assert m.total_params / 1e9 == pytest.approx(14.3, rel=0.02)
    assert m.active_params / 1e9 == pytest.approx(2.7, rel=0.03)


def test_multimodal_config_uses_its_text_model(tmp_path: Path) -> None:
    cfg = {"architectures": ["SomeVLM"], "torch_dtype": "bfloat16", "text_config": dict(TINY),
           "vision_config": {"hidden_size": 1024}}
    m = load_model(str(_write(tmp_path, cfg)))
    assert m.hidden_size == 512 and m.weight_dtype == "bf16"


def test_llama_3_8b_matches_3_1_shapes_with_8k_context() -> None:
    a, b = load_model("llama-3-8b"), load_model("llama-3.1-8b")
    assert a.total_params == b.total_params and a.kv_bytes_per_token == b.kv_bytes_per_token
    assert (a.max_context, b.max_context) == (8192, 131072)


@pytest.mark.parametrize(
    ("name", "preset"),
    [
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
        ("meta-llama/Llama-2-7b-chat-hf", "llama-2-7b"),
        ("deepseek-ai/DeepSeek-V3", "deepseek-v3"),
        ("Qwen/Qwen2.5-32B-Instruct", "qwen2.5-32b"),
        ("LLAMA-3.1-70B", "llama-3.1-70b"),
    ],
)
def test_hub_ids_resolve_to_presets(name: str, preset: str) -> None:
    assert load_model(name) == load_model(preset)


def test_unknown_hub_id_and_model_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown model 'openai/gpt-4'"):
        load_model("openai/gpt-4")
    _write(tmp_path, TINY)  # a downloaded model folder holds config.json
    assert load_model(str(tmp_path)).hidden_size == 512
    with pytest.raises(InputError, match="no such model config"):
        load_model(str(tmp_path / "sub"))  # neither a file nor a preset
