"""Hugging Face causal LMs for the local backend: finding, loading, LoRA, the forward pass.

Base weights are frozen and loaded once per directory; every training or sampling client gets
its own module tree that *shares* those weight tensors and owns only its LoRA adapter, so a
sampler's adapter is a snapshot that later training cannot touch. Beyond Tinker, a spec of None
means full fine-tuning: the client owns a whole copy of the weights. Writing and reading them is
`checkpoint_format.py`'s; `export.py` makes a plain model directory of a checkpoint.
"""

import copy
import functools
import inspect
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
# Tinker's cookbook assumes alpha 32 (its LoRA learning-rate rule takes lora_alpha=32).
LORA_ALPHA = 32
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# peft warns about LoRA on a tied unembedding; Tinker's train_unembed adapts the output
# projection only, which is what peft does, and export unties before merging.
_QUIET = ("tie_word_embeddings", "is_gradient_checkpointing")


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    seed: int
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = True


def resolve_model_dir(base_model: str) -> Path:
    """A local model directory, or a hub id already in the local cache (never downloads)."""
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{base_model!r} has no config.json: not a model directory")
        return path.resolve()
    if path.exists():
        raise FileNotFoundError(f"{base_model!r} is a file, not a model directory")
    if not _HUB_ID.match(base_model):
        raise FileNotFoundError(f"model directory {base_model!r} does not exist")
    try:
        return Path(snapshot_download(base_model, local_files_only=True))
    except Exception as error:
        raise FileNotFoundError(
            f"{base_model!r} is neither a local directory nor in the local Hugging Face cache,"
            " and the Hugging Face hub is unreachable from the local backend (it never"
            " downloads). Pass the path of a local Hugging Face model directory instead, e.g."
            " base_model='fixtures/tiny-qwen3', or a copy of the model downloaded elsewhere."
        ) from error


def load_base_model(model_dir: Path, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per client is noise in tests and logs
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    model.to(device).eval().requires_grad_(False)
    return model


def shared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A new module tree over the same parameter and buffer tensors (cheap; ties survive)."""
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def _unembed_name(model: PreTrainedModel) -> str:
    output = model.get_output_embeddings()
    return next(name for name, module in model.named_modules() if module is output)


def lora_config(model: PreTrainedModel, spec: LoraSpec) -> LoraConfig:
    if spec.rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {spec.rank}")
    targets = [
        *(ATTN_MODULES if spec.train_attn else ()),
        *(MLP_MODULES if spec.train_mlp else ()),
        *([_unembed_name(model)] if spec.train_unembed else ()),
    ]
    return LoraConfig(r=spec.rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=targets)


def with_lora(base: PreTrainedModel, spec: LoraSpec) -> PeftModel:
    """A LoRA model over `base`'s (shared, frozen) weights; `spec.seed` fixes the adapter init."""
    config = lora_config(base, spec)
    with torch.random.fork_rng(devices=[] if base.device.type == "cpu" else [base.device]):
        torch.manual_seed(spec.seed)
        with warnings.catch_warnings():
            for message in _QUIET:
                warnings.filterwarnings("ignore", message=f".*{message}")
            model = get_peft_model(shared_copy(base), config)
    return model.eval()


def trainable_copy(base: PreTrainedModel) -> PreTrainedModel:
    """A copy of `base` that owns all its weights, every one trainable (full fine-tuning)."""
    return copy.deepcopy(base).requires_grad_(True).eval()


def adapted(base: PreTrainedModel, spec: LoraSpec | None) -> torch.nn.Module:
    """The model a client trains: LoRA over `base` per `spec`, or (spec None) a full copy."""
    return trainable_copy(base) if spec is None else with_lora(base, spec)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def frozen_snapshot(model: torch.nn.Module) -> torch.nn.Module:
    """A copy sharing the base weights, with its own detached copy of the trained weights."""
    snapshot = copy.deepcopy(model, {id(t): t for t in model.parameters() if not t.requires_grad})
    return snapshot.requires_grad_(False)


def causal_lm(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model to call: LoRA layers are injected into its module tree."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


@functools.cache
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


def forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
    use_cache: bool = False,
    last_only: bool = False,
) -> tuple[torch.Tensor, Any]:
    """(logits, cache) of one forward pass; hides the `cache`/`past_key_values` rename."""
    accepted = _forward_parameters(type(model))
    cache_name = "cache" if "cache" in accepted else "past_key_values"
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "position_ids": position_ids}
    if cache is not None:
        kwargs[cache_name] = cache
    if last_only and "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = 1
    output = model(input_ids=input_ids, use_cache=use_cache, **kwargs)
    logits = output.logits[:, -1:] if last_only else output.logits
    return logits, output.get(cache_name)
