"""`LocalServiceClient`: Tinker's service-client surface on PyTorch + transformers + peft."""

import functools
import random
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from tinker import types
from tinker.lib.public_interfaces.api_future import APIFuture
from transformers import AutoTokenizer, PreTrainedModel

from harness.weather import Weather

from .budget import kv_bytes_per_token, memory_budget
from .checkpoint_format import (
    CheckpointMeta,
    has_optimizer_state,
    load_weights,
    read_meta,
)
from .engine import GenerationEngine, SamplerModel
from .export import export_merged
from .futures import run_now
from .models import (
    LoraSpec,
    adapted,
    causal_lm,
    frozen_snapshot,
    load_base_model,
    resolve_model_dir,
)
from .sampling import LocalSamplingClient
from .storage import CheckpointStore
from .training import LocalTrainingClient
from .weather import Calm, LocalWeather, local_weather


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _eos_token_ids(model: PreTrainedModel, tokenizer: Any) -> tuple[int, ...]:
    generation = getattr(model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return tuple(sorted({eos} if isinstance(eos, int) else set(eos or ())))


def _close_all(
    engine: GenerationEngine,
    trainers: "weakref.WeakSet[LocalTrainingClient]",
    weather: LocalWeather | Calm,
) -> None:
    engine.close()
    for trainer in list(trainers):
        trainer.close()
    weather.close()  # after the work: what it still holds back fails as closed


class LocalServiceClient:
    """Offline twin of `tinker.ServiceClient`.

    Everything it saves lives under `storage_dir`; a new process with the same `storage_dir`
    resolves every `tinker://` path. `seed` fixes what Tinker leaves random (LoRA init when
    `seed=None`, unseeded sampling), so whole runs replay exactly. `clock` (seconds since the
    epoch) is what checkpoint TTLs run on. `weather` (`harness.weather.load_weather`) makes
    calls take the cloud's time and fail as its profile says.
    """

    def __init__(
        self,
        storage_dir: str | Path,
        device: str | torch.device | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        memory_budget_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        weather: Weather | None = None,
    ):
        self.store = CheckpointStore(storage_dir, clock)
        self.weather = local_weather(weather, self.store)
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = dtype
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._memory_budget = memory_budget_bytes or memory_budget(self.device)
        self._engine = GenerationEngine(self._memory_budget)
        self._bases: dict[Path, PreTrainedModel] = {}
        self._tokenizers: dict[tuple[Path, str], Any] = {}
        self._load_lock = threading.Lock()
        self._trainers: weakref.WeakSet[LocalTrainingClient] = weakref.WeakSet()
        # Also at interpreter exit, for a client nobody closed.
        weakref.finalize(self, _close_all, self._engine, self._trainers, self.weather)

    def __enter__(self) -> "LocalServiceClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close("success")

    def close(
        self,
        status: Literal["success", "errored", "interrupted"] = "success",
        detail: str | None = None,
    ) -> APIFuture[None]:
        """Stop sampling and training: what is queued fails, what runs is waited for."""
        _close_all(self._engine, self._trainers, self.weather)
        return run_now(lambda: None)

    # -- models -------------------------------------------------------------------------------

    def next_seed(self) -> int:
        with self._rng_lock:
            return self._rng.randrange(2**63)

    def base(self, location: str) -> tuple[Path, PreTrainedModel]:
        """The frozen base model (loaded once per directory) and its directory."""
        model_dir = resolve_model_dir(location)
        with self._load_lock:
            if model_dir not in self._bases:
                self._bases[model_dir] = load_base_model(model_dir, self.device, self.dtype)
            return model_dir, self._bases[model_dir]

    def _location(self, meta: CheckpointMeta) -> str:
        """Where a checkpoint's base model is: the directory it was loaded from if that still
        exists (the name may be a path relative to another working directory), else its name."""
        directory = self.store.absolute(meta.model_dir)
        return str(directory) if directory.is_dir() else meta.base_model

    def tokenizer(self, model_dir: Path, user: str = "client") -> Any:
        """The tokenizer in `model_dir`, one instance per user: Rust tokenizers may refuse to
        be used from two threads at once, and the sampling engine decodes in its own."""
        with self._load_lock:
            if (model_dir, user) not in self._tokenizers:
                self._tokenizers[model_dir, user] = AutoTokenizer.from_pretrained(
                    model_dir, local_files_only=True
                )
            return self._tokenizers[model_dir, user]

    def _training_client(
        self,
        base_model: str,
        spec: LoraSpec | None,
        checkpoint: Path | None = None,
        location: str | None = None,
        optimizer: types.OptimizerConfig | None = None,
    ) -> LocalTrainingClient:
        if optimizer is not None and optimizer.type != "adamw":
            raise ValueError(f"the local backend implements AdamW only, got {optimizer.type!r}")
        model_dir, base = self.base(location or base_model)
        model = adapted(base, spec)
        if checkpoint is not None:
            load_weights(model, checkpoint)
        run_id = self.store.new_run_id()
        client = LocalTrainingClient(
            run_id,
            base_model,
            model_dir,
            model,
            spec,
            store=self.store,
            weather=self.weather,
            memory_budget_bytes=self._memory_budget,
            sampler_for=functools.partial(
                self.sampling_client_for, base_model=base_model, model_dir=model_dir
            ),
            sampler_at=lambda path: self.create_sampling_client(model_path=path),
            tokenizer=functools.partial(self.tokenizer, model_dir),
        )
        self._trainers.add(client)
        return client

    def sampling_client_for(
        self, model: torch.nn.Module, base_model: str, model_dir: Path
    ) -> LocalSamplingClient:
        lm = causal_lm(model)
        tokenizer = self.tokenizer(model_dir)
        sampler = SamplerModel(
            lm=lm,
            tokenizer=tokenizer,
            stop_decoder=self.tokenizer(model_dir, user="engine"),
            eos_token_ids=_eos_token_ids(lm, tokenizer),
            vocab_size=lm.get_output_embeddings().weight.shape[0],
            max_context=getattr(lm.config.get_text_config(), "max_position_embeddings", None),
            kv_bytes_per_token=kv_bytes_per_token(lm),
        )
        return LocalSamplingClient(self._engine, sampler, base_model, self.next_seed, self.weather)

    # -- the ServiceClient surface ------------------------------------------------------------

    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None,
        optimizer: types.OptimizerConfig | None = None,
    ) -> APIFuture[LocalTrainingClient]:
        """A fresh LoRA adapter (B = 0, so it starts as the base model) with AdamW state."""
        if not (train_mlp or train_attn or train_unembed):
            raise ValueError("At least one of train_mlp, train_attn, or train_unembed must be True")
        seed = seed if seed is not None else self.next_seed()
        spec = LoraSpec(rank, seed, train_mlp, train_attn, train_unembed)
        return self.weather.service(
            "create_model",
            lambda: run_now(lambda: self._training_client(base_model, spec, optimizer=optimizer)),
            load=False,
        )

    def _from_state(
        self,
        path: str,
        base_model: str | None,
        with_optimizer: bool,
        optimizer: types.OptimizerConfig | None = None,
    ) -> LocalTrainingClient:
        directory = self.store.resolve(path)
        meta = read_meta(directory)
        if with_optimizer and not has_optimizer_state(directory):
            raise FileNotFoundError(
                f"{path} holds no optimizer state (sampler weights?); pass a"
                " tinker://<run_id>/weights/<name> path from save_state"
            )
        client = self._training_client(
            base_model or meta.base_model,
            meta.lora,
            checkpoint=directory,
            location=base_model or self._location(meta),
            optimizer=optimizer,
        )
        if with_optimizer:
            client.load_optimizer_state(directory)
        return client

    def create_training_client_from_state(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: types.OptimizerConfig | None = None,
    ) -> APIFuture[LocalTrainingClient]:
        """A new run with the checkpoint's adapter weights and a fresh optimizer."""
        return self.weather.service(
            "load_state",
            lambda: run_now(
                lambda: self._from_state(
                    path, base_model, with_optimizer=False, optimizer=optimizer
                )
            ),
            load=True,
        )

    def create_training_client_from_state_with_optimizer(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
    ) -> APIFuture[LocalTrainingClient]:
        """A new run with the checkpoint's adapter weights and AdamW state (moments, step)."""
        return self.weather.service(
            "load_state",
            lambda: run_now(lambda: self._from_state(path, base_model, with_optimizer=True)),
            load=True,
        )

    def create_sampling_client(
        self,
        model_path: str | None = None,
        base_model: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
    ) -> APIFuture[LocalSamplingClient]:
        if model_path is None and base_model is None:
            raise ValueError("Either model_path or base_model must be provided")

        def create() -> LocalSamplingClient:
            if model_path is None:
                model_dir, base = self.base(base_model)
                return self.sampling_client_for(base, base_model, model_dir)
            directory = self.store.resolve(model_path)
            meta = read_meta(directory)
            name = base_model or meta.base_model
            model_dir, base = self.base(base_model or self._location(meta))
            model = adapted(base, meta.lora)
            load_weights(model, directory)
            return self.sampling_client_for(frozen_snapshot(model), name, model_dir)

        return self.weather.service(None, lambda: run_now(create), load=model_path is not None)

    # -- beyond Tinker ------------------------------------------------------------------------

    def create_full_training_client(self, base_model: str) -> APIFuture[LocalTrainingClient]:
        """A training client that updates every weight of the base model (full fine-tuning),
        e.g. to train a small model from scratch. Tinker offers LoRA only; everything else
        (losses, optimizer, checkpoints, sampling, resume, export) works as for LoRA."""
        return run_now(lambda: self._training_client(base_model, None))

    def export_merged_model(self, path: str, out_dir: str | Path) -> Path:
        """Write `path`'s weights (LoRA merged into the base, or fully fine-tuned ones) and the
        tokenizer as a plain Hugging Face model directory, e.g. to commit a trained model as a
        new base."""
        directory = self.store.resolve(path)
        meta = read_meta(directory)
        model_dir, base = self.base(self._location(meta))
        return export_merged(base, meta.lora, directory, model_dir, Path(out_dir))
