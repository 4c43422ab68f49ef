"""The local backend's memory budget: bytes one sampling batch or training chunk may use, and
what a sampled row or a trained token costs of it.

The engine packs sampling rows and the training client chunks forward/backward passes by these
numbers; the service measures the budget once, on the device it runs on.
"""

import torch
from transformers import PreTrainedModel

CPU_BUDGET_BYTES = 4 << 30
# Logits (float32) plus the float64 softmax and cumulative sum made while sampling a row.
SAMPLING_BYTES_PER_VOCAB_ENTRY = 20
MIN_TRAIN_TOKENS_PER_CHUNK = 64


def memory_budget(device: torch.device) -> int:
    """30% of the GPU's free memory, or 4 GiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.3 * free)
    return CPU_BUDGET_BYTES


def kv_bytes_per_token(model: PreTrainedModel) -> int:
    """The KV cache's bytes per token: keys and values of every layer."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    element = torch.finfo(model.dtype).bits // 8
    return config.num_hidden_layers * 2 * kv_heads * head_dim * element


def sampling_row_bytes(
    kv_bytes_per_token: int, vocab_size: int, prompt_tokens: int, max_tokens: int
) -> int:
    """One sampled row: its KV cache at full length, and one step's logits and softmax."""
    return (
        kv_bytes_per_token * (prompt_tokens + max_tokens)
        + vocab_size * SAMPLING_BYTES_PER_VOCAB_ENTRY
    )


def train_bytes_per_token(model: PreTrainedModel, vocab_size: int) -> int:
    """Rough activation memory per token for backward: ~40 hidden-size tensors per layer, plus
    the logits and their log-softmax."""
    config = model.config.get_text_config()
    return 4 * (config.num_hidden_layers * config.hidden_size * 40 + 3 * vocab_size)


def train_tokens_per_chunk(model: PreTrainedModel, budget_bytes: int) -> int:
    """Padded tokens per forward/backward chunk that fit the budget (at least 64)."""
    vocab_size = model.get_output_embeddings().weight.shape[0]
    return max(MIN_TRAIN_TOKENS_PER_CHUNK, budget_bytes // train_bytes_per_token(model, vocab_size))
