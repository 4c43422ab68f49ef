"""A checkpoint as a plain Hugging Face model directory: LoRA merged into the base (or the fully
fine-tuned weights), with the base model's tokenizer files."""

import copy
import shutil
from pathlib import Path

import torch
from transformers import PreTrainedModel

from .checkpoint_format import load_adapter, load_weights
from .models import LoraSpec, trainable_copy, with_lora


def _merged(base: PreTrainedModel, spec: LoraSpec, adapter_dir: Path) -> PreTrainedModel:
    merged_base = copy.deepcopy(base)  # merging writes into the base weights: own them
    if spec.train_unembed and getattr(merged_base.config, "tie_word_embeddings", False):
        output = merged_base.get_output_embeddings()
        output.weight = torch.nn.Parameter(output.weight.detach().clone(), requires_grad=False)
        merged_base.config.tie_word_embeddings = False
    model = with_lora(merged_base, spec)
    load_adapter(model, adapter_dir)
    return model.merge_and_unload()


def export_merged(
    base: PreTrainedModel,
    spec: LoraSpec | None,
    weights_dir: Path,
    model_dir: Path,
    out_dir: Path,
) -> Path:
    """Write a plain Hugging Face model directory: base + merged adapter (or the fully
    fine-tuned weights), and the tokenizer."""
    if spec is None:
        merged = trainable_copy(base)
        load_weights(merged, weights_dir)
    else:
        merged = _merged(base, spec, weights_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    for source in model_dir.iterdir():
        if source.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_")):
            shutil.copy2(source, out_dir / source.name)
    return out_dir
