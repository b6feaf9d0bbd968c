"""Roofline cost of one engine iteration: how long a batch of prefill chunks and decodes takes.

Per iteration (one forward pass over every scheduled token, as vLLM runs it):

- **Linear layers** (QKV/O projections, MLP, LM head): ``max(FLOPs / (peak·η_F(T)),
  bytes / (bandwidth·η_B))`` where ``T`` is the number of tokens in the step and the weight
  bytes are read once per step. For MoE layers only the experts the batch touches are
  read: with ``B`` tokens each routed to ``k`` of ``E`` experts uniformly, the expected
  number of distinct experts is ``E·(1 − (1 − k/E)^B)``; the expert GEMMs run at the
  efficiency of ``B·k/touched`` tokens each.
- **Attention** per sequence from its context: FLOPs ``attention_flops_per_pair`` per
  (query, key) pair and the KV-cache bytes read, as a roofline of its own, for the decodes
  and for the prefill chunks of the step. Every decode has the same arithmetic intensity
  (its FLOPs and bytes both scale with context + 1), so the roofline over the decodes'
  *sums* equals the sum of their rooflines exactly. Prefill chunks of a few hundred tokens
  or more are compute-bound whatever their context; only a tiny chunk over a long context
  is bandwidth-bound, and a roofline over sums can then only under-count that chunk's KV
  read (bounded by its bytes / bandwidth). That is why the cost needs only sums
  (``step_time_sums``), never a loop over sequences.
- **Elementwise** kernels (fused add+RMSNorm twice, rotary embedding, SiLU·mul, sampler)
  are bandwidth-bound reads and writes of activations.
- **Overheads**: ``layer_overhead_s`` per layer (kernel floors and launch gaps under CUDA
  graphs) and ``step_overhead_s`` per step (CPU scheduling, input preparation, sampling,
  output processing), and ``seq_overhead_s`` per sequence in the step (its input
  preparation, sampling, detokenisation and streamed chunk: what makes a CPU engine's step
  grow with the batch when the arithmetic of a small model is nothing), and
  ``token_overhead_s`` per token in the step (a CPU engine's per-token work outside the
  GEMM and attention rooflines: positions, slot mappings, dtype conversions, unfused
  kernels; 0 in the presets).
- **Tensor parallel**: FLOPs, weights, heads and KV heads divided by ``tp`` (KV heads never
  below one per rank; MLA's latent is replicated), plus two ring all-reduces per layer of
  ``T·hidden`` activations: ``2(tp−1)/tp · bytes / link_bandwidth + link_latency``.

Everything the step needs that does not depend on the batch is computed once in
``__init__``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from burstbench.backends.hardware.profile import HardwareProfile
from burstbench.backends.reference.models import ModelConfig
from burstbench.errors import EngineError, UsageError

ACT_BYTES = 2.0
"""Activations are bf16/fp16 whatever the weight dtype (vLLM's fp8/int8 GEMMs quantise on the fly)."""

NON_TORCH_BYTES = 0.3 * 2**30
"""Device memory outside PyTorch's allocator that vLLM's profiling run sees (CUDA context,
cuBLAS/NCCL workspaces): vLLM's ``non_torch_memory`` log line reports 0.1–0.65 GiB for
single-GPU 7–8B models."""


class CostModel:
    """Iteration time of ``model`` on ``hardware`` with tensor parallelism ``tp``."""

    def __init__(self, model: ModelConfig, hardware: HardwareProfile, *, tp: int = 1) -> None:
        if tp < 1 or int(tp) != tp:
            raise UsageError(f"--tp must be a positive integer, got {tp}")
        if model.num_heads % tp:
            raise EngineError(
                f"{model.name} has {model.num_heads} attention heads, not divisible by tp={tp}; "
                "choose a tp that divides it"
            )
        if not model.is_mla and model.num_kv_heads % tp and tp % model.num_kv_heads:
            raise EngineError(
                f"{model.name} has {model.num_kv_heads} KV heads: tp={tp} must divide it or be "
                "a multiple of it (vLLM shards or replicates whole KV heads)"
            )
        self.model = model
        self.hardware = hardware
        self.tp = tp
        m, hw = model, hardware

        peak = hw.peak_flops
        if m.weight_dtype == "fp8":
            peak *= hw.fp8_flops_multiplier
        elif m.weight_dtype == "int8":
            peak *= hw.int8_flops_multiplier
        self._peak = peak
        self._attn_peak = hw.peak_flops  # attention runs in bf16 whatever the weights
        self._eta_f = hw.flops_efficiency
        self._mem_bw = hw.mem_bandwidth
        self._eta_b = hw.bandwidth_efficiency
        self._const_bw = len(hw.bandwidth_efficiency.points) == 1
        self._decode_cache: dict[int, tuple[float, float]] = {}
        self._base_cache: dict[tuple[int, int], float] = {}

        bpp = m.weight_bytes_per_param
        h = m.hidden_size
        # Non-expert weights read every step, per rank (embedding table: lookup only).
        head = m.embedding_params if m.tie_word_embeddings else m.lm_head_params
        dense_params = (
            m.num_layers * m.attention_params_per_layer
            + m.num_dense_layers * m.dense_mlp_params
            + m.num_moe_layers * (m.shared_experts * m.expert_params + h * m.num_experts + h)
        )
        self._dense_bytes = dense_params * bpp / tp
        self._head_bytes = head * bpp / tp
        self._dense_flops_per_token = 2.0 * dense_params / tp
        self._head_flops_per_seq = 2.0 * head / tp
        # Routed experts.
        self._moe = m.is_moe
        self._experts = m.num_experts
        self._k = m.experts_per_token
        self._log_miss = math.log1p(-m.experts_per_token / m.num_experts) if m.is_moe and m.experts_per_token < m.num_experts else -math.inf
        self._expert_bytes = m.num_moe_layers * m.expert_params * bpp / tp  # per distinct expert
        self._expert_flops_per_token = 2.0 * m.num_moe_layers * m.experts_per_token * m.expert_params / tp

        # Attention, per rank.
        self._attn_flops_per_pair = m.attention_flops_per_pair / tp
        if m.is_mla:
            kv_per_rank = m.kv_bytes_per_token
        else:
            kv_heads_rank = max(1, m.num_kv_heads // tp)
            kv_per_rank = int(
                m.num_layers * kv_heads_rank * (m.head_dim + m.value_head_dim) * m.kv_bytes_per_elem
            )
        self.kv_bytes_per_token: int = kv_per_rank
        """KV-cache bytes per token held on one TP rank."""

        # Elementwise kernels: fused add+RMSNorm x2 (read x and residual, write both),
        # rotary embedding on q and k (read+write), SiLU·mul (read 2i, write i).
        q_dim = m.num_heads * m.head_dim / tp
        k_dim = (m.kv_lora_rank + m.qk_rope_head_dim) if m.is_mla else max(1, m.num_kv_heads // tp) * m.head_dim
        if m.is_moe:
            inter_dense = m.intermediate_size / tp
            inter_moe = (m.experts_per_token + m.shared_experts) * m.moe_intermediate_size / tp
            inter_elems = m.num_dense_layers * 3 * inter_dense + m.num_moe_layers * 3 * inter_moe
        else:
            inter_elems = m.num_layers * 3 * m.intermediate_size / tp
        per_token = m.num_layers * (8 * h + 2 * (q_dim + k_dim)) + inter_elems
        self._elem_bytes_per_token = per_token * ACT_BYTES
        # fp32 logits written and read; vLLM gathers them to one rank to sample (not sharded)
        self._sampler_bytes_per_seq = 2 * m.vocab_size * 4.0

        # Tensor-parallel all-reduce: 2 per layer over T·hidden activations.
        self._allreduces = 2 * m.num_layers if tp > 1 else 0
        self._ar_bytes_per_token = (2.0 * (tp - 1) / tp) * h * ACT_BYTES
        self._link_bw = hw.link_bandwidth
        self._link_latency = hw.link_latency_s

        self._fixed = hw.step_overhead_s + m.num_layers * hw.layer_overhead_s
        self._per_seq = hw.seq_overhead_s
        self._per_token = hw.token_overhead_s

    # ------------------------------------------------------------------------------------
    def step_time(self, prefill: Sequence[tuple[int, int]], decode: Sequence[int]) -> float:
        """Seconds for one engine iteration.

        ``prefill``: ``(new_tokens, context_before)`` per prefilling sequence chunk;
        ``decode``: context length (tokens already in the cache) of each decoding sequence.
        """
        p_tokens = 0
        p_pairs = 0.0
        p_kv = 0
        for n, c in prefill:
            p_tokens += n
            p_pairs += n * c + n * (n + 1) / 2
            p_kv += c + n
        return self.step_time_sums(
            prefill_tokens=p_tokens,
            prefill_seqs=len(prefill),
            prefill_pairs=p_pairs,
            prefill_kv_tokens=p_kv,
            decode_seqs=len(decode),
            decode_context_sum=sum(decode),
        )

    def step_time_sums(
        self,
        *,
        prefill_tokens: int = 0,
        prefill_seqs: int = 0,
        prefill_pairs: float = 0.0,
        prefill_kv_tokens: int = 0,
        decode_seqs: int = 0,
        decode_context_sum: int = 0,
    ) -> float:
        """``step_time`` from pre-summed quantities, for callers that keep running sums.

        ``prefill_pairs`` = Σ n·c + n(n+1)/2 over prefill chunks (causal query/key pairs),
        ``prefill_kv_tokens`` = Σ (c + n) (KV read and written), ``decode_context_sum`` =
        Σ context over decoding sequences (each decode also attends to its new token).
        """
        if not prefill_tokens:
            if decode_seqs <= 0:
                return 0.0
            entry = self._decode_cache.get(decode_seqs)
            if entry is None:
                entry = self._decode_entry(decode_seqs)
            return entry[0] + (decode_context_sum + decode_seqs) * entry[1]
        tokens = prefill_tokens + decode_seqs
        seqs = prefill_seqs + decode_seqs
        key = (tokens, seqs)
        base = self._base_cache.get(key)
        if base is None:
            base = self._base(tokens, seqs)
            if len(self._base_cache) > 200_000:
                self._base_cache.clear()
            self._base_cache[key] = base
        t = base
        if decode_seqs:
            if self._const_bw:
                entry = self._decode_cache.get(decode_seqs) or self._decode_entry(decode_seqs)
                coef = entry[1]
            else:
                coef = self._decode_attention_coef(decode_seqs, tokens)
            t += (decode_context_sum + decode_seqs) * coef
        return t + self._prefill_attention(prefill_tokens, prefill_pairs, prefill_kv_tokens, tokens)

    def decode_line(self, decode_seqs: int) -> tuple[float, float]:
        """``(a, b)`` with ``step_time_sums(decode_seqs=B, decode_context_sum=S) == a + b·S``.

        A decode-only step is exactly affine in the context sum for a fixed batch, so an
        engine can advance many decode steps with one multiply-add each.
        """
        if decode_seqs <= 0:
            return 0.0, 0.0
        base, coef = self._decode_cache.get(decode_seqs) or self._decode_entry(decode_seqs)
        return base + decode_seqs * coef, coef

    def decode_terms(self, decode_seqs: int) -> tuple[float, float]:
        """``(base, coef)`` with ``step_time_sums(decode_seqs=B, decode_context_sum=S)`` being
        exactly ``base + (S + B) * coef`` for ``B > 0`` (the same operations on the same cached
        values): a decode loop costs a step without a call."""
        entry = self._decode_cache.get(decode_seqs)
        return entry if entry is not None else self._decode_entry(decode_seqs)

    # --- the formula, piece by piece (cached above by the batch shape) -------------------
    def _base(self, tokens: int, seqs: int) -> float:
        """Everything but attention: overheads, linear layers, elementwise, all-reduce."""
        bw = self._bw_at(tokens)
        # Linear layers: dense part + LM head for every sequence that samples.
        flops = self._dense_flops_per_token * tokens + self._head_flops_per_seq * seqs
        wbytes = self._dense_bytes + self._head_bytes
        t_lin = max(flops / (self._peak * self._eta_f(tokens)), wbytes / bw)
        if self._moe:
            touched = self._experts * -math.expm1(tokens * self._log_miss)
            touched = max(touched, min(self._experts, self._k))
            per_expert_tokens = max(1, round(tokens * self._k / touched))
            t_lin += max(
                self._expert_flops_per_token * tokens / (self._peak * self._eta_f(per_expert_tokens)),
                self._expert_bytes * touched / bw,
            )
        t_elem = (self._elem_bytes_per_token * tokens + self._sampler_bytes_per_seq * seqs) / bw
        t_comm = 0.0
        if self._allreduces:
            t_comm = self._allreduces * (
                self._ar_bytes_per_token * tokens / self._link_bw + self._link_latency
            )
        return self._fixed + self._per_seq * seqs + self._per_token * tokens + t_lin + t_elem + t_comm

    def _bw_at(self, tokens: int) -> float:
        return self._mem_bw * self._eta_b(tokens)

    def _decode_attention_coef(self, decode_seqs: int, tokens: int) -> float:
        """Seconds per attended (context + 1) token of the decodes: always bandwidth-bound
        in practice, but kept a roofline so an exotic config is still costed right."""
        return max(
            self._attn_flops_per_pair / (self._attn_peak * self._eta_f(decode_seqs)),
            self.kv_bytes_per_token / self._bw_at(tokens),
        )

    def _decode_entry(self, b: int) -> tuple[float, float]:
        entry = (self._base(b, b), self._decode_attention_coef(b, b))
        self._decode_cache[b] = entry
        return entry

    def _prefill_attention(self, prefill_tokens: int, pairs: float, kv_tokens: int, tokens: int) -> float:
        return max(
            self._attn_flops_per_pair * pairs / (self._attn_peak * self._eta_f(prefill_tokens)),
            self.kv_bytes_per_token * kv_tokens / self._bw_at(tokens),
        )

    def step_time_reference(
        self, prefill: Sequence[tuple[int, int]], decode: Sequence[int]
    ) -> float:
        """The same cost without sums or caches, sequence by sequence (for tests)."""
        p_tok = sum(n for n, _ in prefill)
        tokens = p_tok + len(decode)
        if tokens == 0:
            return 0.0
        t = self._base(tokens, len(prefill) + len(decode))
        if decode:
            coef = self._decode_attention_coef(len(decode), tokens)
            t += sum((c + 1) * coef for c in decode)
        if prefill:
            t += self._prefill_attention(
                p_tok,
                sum(n * c + n * (n + 1) / 2 for n, c in prefill),
                sum(n + c for n, c in prefill),
                tokens,
            )
        return t

    # ------------------------------------------------------------------------------------
    def weight_bytes_per_rank(self) -> float:
        """Device memory the weights take on one TP rank (all experts, embedding included)."""
        return self.model.weight_bytes / self.tp

    def activation_peak_bytes(self, max_num_batched_tokens: int = 8192, max_num_seqs: int = 256) -> float:
        """Peak activation memory of vLLM's profiling forward pass, per rank.

        The largest live tensors of one layer at ``max_num_batched_tokens``: the gate/up
        output (2·i), its SiLU·mul result (i), the QKV output and a few hidden-sized
        buffers; plus the sampler's fp32 logits (and probabilities) for ``max_num_seqs``.
        """
        m, tp = self.model, self.tp
        inter = (
            max(m.intermediate_size if m.num_dense_layers else 0, (m.experts_per_token + m.shared_experts) * m.moe_intermediate_size)
            if m.is_moe
            else m.intermediate_size
        )
        qkv = (m.num_heads * m.head_dim + 2 * max(1, m.num_kv_heads // tp) * m.head_dim * tp) / tp
        per_token = (3 * inter / tp + qkv + 4 * m.hidden_size) * ACT_BYTES
        sampler = min(max_num_seqs, max_num_batched_tokens) * m.vocab_size * 4.0 * 2
        return max_num_batched_tokens * per_token + sampler

    def kv_cache_blocks(
        self,
        *,
        block_size: int = 16,
        gpu_memory_utilization: float = 0.9,
        max_num_batched_tokens: int = 8192,
        max_num_seqs: int = 256,
        max_model_len: int | None = None,
    ) -> int:
        """KV-cache blocks per rank, the way vLLM sizes them.

        ``memory × utilisation − weights − activation peak − non-PyTorch memory``, over the
        bytes of one block (``block_size`` tokens on one rank). Raises ``EngineError`` when
        nothing is left, or (like vLLM at start-up) when ``max_model_len`` is given and one
        sequence of that length would not fit, with what to change.
        """
        if not 0 < gpu_memory_utilization <= 1:
            raise UsageError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if block_size < 1:
            raise UsageError(f"block_size must be positive, got {block_size}")
        budget = self.hardware.memory_bytes * gpu_memory_utilization
        weights = self.weight_bytes_per_rank()
        act = self.activation_peak_bytes(max_num_batched_tokens, max_num_seqs)
        free = budget - weights - act - NON_TORCH_BYTES
        block_bytes = self.kv_bytes_per_token * block_size
        blocks = int(free // block_bytes) if free > 0 else 0
        if blocks < 1:
            gib = 2**30
            raise EngineError(
                f"{self.model.name} does not fit on {self.hardware.name} with tp={self.tp}: "
                f"{budget / gib:.1f} GiB usable per device, weights {weights / gib:.1f} GiB, "
                f"activations {act / gib:.1f} GiB; raise --tp, use fp8 weights, or a larger device"
            )
        if max_model_len is not None and blocks * block_size < max_model_len:
            raise EngineError(
                f"max_model_len {max_model_len} is larger than the KV cache of {self.model.name} "
                f"on {self.hardware.name} with tp={self.tp} ({blocks * block_size} tokens); "
                "lower --max-model-len, raise --gpu-memory-utilization or --tp"
            )
        return blocks


def estimate_batch_latency(cost: CostModel, batch: int, input_len: int, output_len: int) -> float:
    """End-to-end seconds of vLLM's ``benchmark_latency`` for one batch, as the scheduler runs it.

    One prefill step of ``batch × input_len`` tokens (which also samples the first output
    token), then ``output_len − 1`` decode steps at ``batch`` with contexts growing from
    ``input_len`` (the first decode attends to the prompt plus the first generated token).
    The simulator's own run of this case should agree.
    """
    if batch < 1 or input_len < 1 or output_len < 1:
        raise UsageError("batch, input_len and output_len must be positive")
    total = cost.step_time([(input_len, 0)] * batch, [])
    for i in range(output_len - 1):
        total += cost.step_time_sums(decode_seqs=batch, decode_context_sum=batch * (input_len + i))
    return total
