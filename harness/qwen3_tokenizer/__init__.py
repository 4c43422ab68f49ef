"""Qwen3's tokenizer, built offline from open BPE ranks (see README.md here)."""

from pathlib import Path

QWEN3_TOKENIZER_DIR = Path(__file__).parent
