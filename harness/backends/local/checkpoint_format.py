"""A local checkpoint on disk: the files of its directory, its metadata record, the atomic write.

A checkpoint is one directory holding

- the trained weights: `adapter_model.safetensors` (with peft's `adapter_config.json`) for a
  LoRA run, or `model.safetensors`, every weight, for full fine-tuning;
- `optimizer.pt`, the AdamW state (moments and step count), in a `save_state` checkpoint
  (kind "weights") only;
- `checkpoint.json`, the `CheckpointMeta` record: what the weights are (the base model, its
  directory, the LoRA spec), the caller's metadata and the checkpoint's lifetime.

Where the directory lies (a `tinker://` path under a storage root) and when a checkpoint
expires is `storage.py`'s business; this module reads and writes one directory.
"""

import dataclasses
import errno
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, load_model, save_model

from .models import LoraSpec

# Version 1 added `format_version` itself: metadata without one (read as version 0, written
# before) has the same keys, so it loads as it is.
FORMAT_VERSION = 1
META_FILE = "checkpoint.json"
OPTIMIZER_FILE = "optimizer.pt"
ADAPTER_FILE = "adapter_model.safetensors"  # the name peft's save_pretrained gives it
FULL_WEIGHTS_FILE = "model.safetensors"

Kind = Literal["weights", "sampler_weights"]
KINDS: tuple[Kind, ...] = ("weights", "sampler_weights")


class CheckpointFormatError(ValueError):
    """A checkpoint directory whose metadata does not read as this backend's (damaged,
    foreign, or of a newer format); the message is one line naming the file."""


@dataclass(frozen=True)
class CheckpointMeta:
    """What `checkpoint.json` records."""

    kind: Kind
    base_model: str
    """The base model's name, as the run was created with it."""
    model_dir: str
    """The base model's directory, relative to the storage root (absolute in older checkpoints)."""
    lora: LoraSpec | None
    """The adapter's spec; None for full fine-tuning."""
    user_metadata: dict[str, str] | None = None
    ttl_seconds: int | None = None
    saved_at: float | None = None
    """Seconds since the epoch on the store's clock (None in checkpoints older than lifetimes)."""
    expires_at: float | None = None
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # the LoRA spec too, as its fields


# The keys a checkpoint may lack (older ones do), with the JSON types they hold.
_OPTIONAL: dict[str, tuple[type | tuple[type, ...], str]] = {
    "user_metadata": (dict, "an object"),
    "ttl_seconds": (int, "an integer"),
    "saved_at": ((int, float), "a number"),
    "expires_at": ((int, float), "a number"),
}


def meta_from_json(row: Any) -> CheckpointMeta:
    """The record `row` (parsed `checkpoint.json`) holds; ValueError naming what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"the metadata is a JSON {type(row).__name__}, not an object")
    version = row.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"format_version {version!r} is not a format version")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"it is in checkpoint format {version}, newer than the {FORMAT_VERSION} this"
            " harness reads: upgrade the harness to load it"
        )
    missing = [key for key in ("kind", "base_model", "model_dir", "lora") if key not in row]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")
    if row["kind"] not in KINDS:
        raise ValueError(f"kind {row['kind']!r} is not one of {', '.join(KINDS)}")
    for key in ("base_model", "model_dir"):
        if not isinstance(row[key], str):
            raise ValueError(f"{key} {row[key]!r} is not a string")
    for key, (types, described) in _OPTIONAL.items():
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            raise ValueError(f"{key} {value!r} is not {described}")
    return CheckpointMeta(
        kind=cast(Kind, row["kind"]),
        base_model=row["base_model"],
        model_dir=row["model_dir"],
        lora=_lora(row["lora"]),
        user_metadata=row.get("user_metadata"),
        ttl_seconds=row.get("ttl_seconds"),
        saved_at=row.get("saved_at"),
        expires_at=row.get("expires_at"),
        format_version=version,
    )


def _lora(value: Any) -> LoraSpec | None:
    if value is None:
        return None
    try:
        return LoraSpec(**value)
    except TypeError:
        raise ValueError(f"lora {value!r} is not a LoRA spec") from None


def write_meta(directory: Path, meta: CheckpointMeta) -> None:
    (directory / META_FILE).write_text(json.dumps(meta.to_json(), indent=2, sort_keys=True))


def read_meta(directory: Path) -> CheckpointMeta:
    """The metadata of the checkpoint in `directory` (FileNotFoundError if it has none)."""
    file = directory / META_FILE
    try:
        return meta_from_json(json.loads(file.read_text()))
    except json.JSONDecodeError as error:
        reason = f"not JSON: {error.msg} at line {error.lineno}, column {error.colno}"
    except UnicodeDecodeError:
        reason = "not text"
    except ValueError as error:
        reason = str(error)
    # The reason first: the file's path is long, and errors are shown cut to their start.
    raise CheckpointFormatError(f"unreadable checkpoint ({reason}): {file}")


# -- weights and optimizer state --------------------------------------------------------------


def save_weights(model: torch.nn.Module, directory: Path) -> None:
    """The trained weights: the adapter, or (full fine-tuning) the whole model."""
    if isinstance(model, PeftModel):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*embedding")
            model.save_pretrained(directory, save_embedding_layers=False)
    else:
        save_model(model, str(directory / FULL_WEIGHTS_FILE))  # stores tied weights once


def load_adapter(model: PeftModel, directory: Path) -> None:
    weights = load_file(directory / ADAPTER_FILE, device=str(model.device))
    result = set_peft_model_state_dict(model, weights)
    missing = [key for key in result.missing_keys if "lora_" in key]
    if result.unexpected_keys or missing:
        raise ValueError(
            f"adapter in {directory} does not fit the model: unexpected"
            f" {result.unexpected_keys[:3]}, missing {missing[:3]}"
        )


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    if isinstance(model, PeftModel):
        load_adapter(model, directory)
    else:
        load_model(model, str(directory / FULL_WEIGHTS_FILE), device=str(model.device))


def has_optimizer_state(directory: Path) -> bool:
    return (directory / OPTIMIZER_FILE).is_file()


def load_optimizer_state(directory: Path, device: torch.device | str) -> dict[str, Any]:
    return torch.load(directory / OPTIMIZER_FILE, map_location=device, weights_only=True)


def optimizer_steps(directory: Path) -> int:
    """The steps AdamW had taken when the checkpoint in `directory` was saved (the count it
    keeps with its moments)."""
    state = load_optimizer_state(directory, "cpu")
    steps = {int(param_state["step"]) for param_state in state["state"].values()}
    return steps.pop() if len(steps) == 1 else max(steps, default=0)


# -- writing a checkpoint ---------------------------------------------------------------------


def write_checkpoint(
    directory: Path,
    meta: CheckpointMeta,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    label: str,
) -> None:
    """Write the checkpoint (optimizer state in kind "weights" only) into `directory`,
    replacing what is there, atomically: a killed save leaves no half-written checkpoint and
    the one it replaces whole. `label` names the checkpoint in errors."""
    staging = directory.with_name(f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp")
    staging.mkdir(parents=True)
    try:
        save_weights(model, staging)
        if meta.kind == "weights":
            torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        write_meta(staging, meta)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if _no_space_left(error):  # safetensors says so in its own exception type
            raise OSError(
                errno.ENOSPC, f"no space left writing {label}; free space and rerun"
            ) from error
        raise
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(staging, directory)


def _no_space_left(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(error)
