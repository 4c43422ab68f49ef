"""Tiny Qwen3 models for offline tests and benchmarks: a byte-level BPE tokenizer trained on a
corpus, and randomly initialised float32 decoders of any shape for it.

`scripts/make_tiny_model.py` builds the committed fixture (fixtures/tiny-qwen3) with these;
benchmarks and tests build bigger or smaller ones at run time, e.g.
`build_model(tokenizer_dir, ModelShape(hidden=320, layers=8, heads=8, kv_heads=4, head_dim=40,
intermediate=1024))` has 11.0M parameters and builds in about 0.1 s.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from harness.data.gsm8k import Problem
from harness.prompts import format_prompt

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN, "<|im_start|>", "<|im_end|>")
# Added but not special, so `decode(..., skip_special_tokens=True)` keeps them for the reward.
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# Qwen2/Qwen3's pre-tokenizer regex: `\p{N}` alone makes every digit its own pre-token, so BPE
# can never merge digits and numbers are always spelled digit by digit.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
VOCAB_MULTIPLE = 64


@dataclass(frozen=True)
class ModelShape:
    """Size of a Qwen3 decoder; the defaults give the committed fixture (~0.2M parameters)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    intermediate: int = 192
    max_positions: int = 2048

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"ModelShape.{field.name} must be positive")
        if self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )


def tokenizer_corpus(problems: Iterable[Problem]) -> Iterator[str]:
    """Every question inside both prompt templates, and every answer, as the model will see them."""
    for problem in problems:
        yield format_prompt(problem.question, "r1_zero")
        yield format_prompt(problem.question, "boxed")
        yield problem.answer


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with Qwen's digit-splitting pre-tokenizer; lossless on any unicode string."""
    min_size = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if vocab_size <= min_size:
        raise ValueError(f"vocab_size must exceed {min_size} (bytes + special tokens)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    return tokenizer


def wrap_tokenizer(tokenizer: Tokenizer, max_positions: int) -> PreTrainedTokenizerFast:
    """The transformers tokenizer: no BOS (as Qwen), EOS doubles as padding."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t != EOS_TOKEN],
        add_bos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=max_positions,
    )


def round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


def build_config(tokenizer: PreTrainedTokenizerFast, shape: ModelShape) -> Qwen3Config:
    """A Qwen3 config sized by `shape` whose vocabulary covers `tokenizer`."""
    return Qwen3Config(
        vocab_size=round_up(len(tokenizer), VOCAB_MULTIPLE),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def build_model(
    tokenizer_dir: Path | str, shape: ModelShape = ModelShape(), seed: int = 0
) -> Qwen3ForCausalLM:
    """A randomly initialised float32 Qwen3 for the tokenizer saved in `tokenizer_dir`."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = build_config(tokenizer, shape)
    # A forked RNG keeps the weights a function of `seed` alone and leaves the caller's RNG as is.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    return model.eval()


def save_random_model(
    tokenizer_dir: Path, out_dir: Path, shape: ModelShape, seed: int = 0
) -> Qwen3ForCausalLM:
    """`build_model` written to `out_dir` with a copy of the tokenizer: a loadable model dir."""
    model = build_model(tokenizer_dir, shape, seed)
    model.save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_dir / name, out_dir / name)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
