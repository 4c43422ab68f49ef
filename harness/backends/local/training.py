"""The training client: a LoRA model, its AdamW state, and calls run in submission order."""

import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from tinker import types
from tinker.lib.public_interfaces.api_future import APIFuture
from tinker.types.optimizer import OptimParamsBase

from harness.weather import Call

from . import batches, losses
from .budget import train_tokens_per_chunk
from .checkpoint_format import CheckpointMeta, Kind, load_optimizer_state, write_checkpoint
from .futures import OrderedWorker
from .models import LoraSpec, causal_lm, forward, frozen_snapshot, trainable_parameters
from .optimizer import adam_step, new_optimizer
from .storage import CheckpointStore, TinkerPath, check_name
from .weather import Calm, LocalWeather

if TYPE_CHECKING:
    from .sampling import LocalSamplingClient

T = TypeVar("T")


class LocalTrainingClient:
    """Mirror of `tinker.TrainingClient` for one LoRA (or full fine-tuning) run on this machine.

    What it does not own it is handed: the `store` its checkpoints go to, the `weather` its
    calls are answered in, the `memory_budget_bytes` a forward/backward chunk may use, and
    from the service `sampler_for` (a sampling client over weights of this base model),
    `sampler_at` (one over a saved checkpoint) and `tokenizer` (the base model's, made once).
    """

    def __init__(
        self,
        run_id: str,
        base_model: str,
        model_dir: Path,
        model: torch.nn.Module,
        spec: LoraSpec | None,
        *,
        store: CheckpointStore,
        weather: LocalWeather | Calm,
        memory_budget_bytes: int,
        sampler_for: Callable[[torch.nn.Module], "LocalSamplingClient"],
        sampler_at: Callable[[str], APIFuture["LocalSamplingClient"]],
        tokenizer: Callable[[], Any],
    ):
        self._store = store
        self._weather = weather
        self._sampler_for = sampler_for
        self._sampler_at = sampler_at
        self._tokenizer = tokenizer
        self.model_id = run_id
        self._base_model = base_model
        self._model_dir = model_dir
        self._model = model
        self._lm = causal_lm(model)
        self._spec = spec
        self._params = trainable_parameters(model)
        self._optimizer = new_optimizer(self._params)
        self._vocab_size = self._lm.get_output_embeddings().weight.shape[0]
        self._tokens_per_chunk = train_tokens_per_chunk(self._lm, memory_budget_bytes)
        self._worker = OrderedWorker(f"local-train-{run_id}")
        self._timeline = weather.timeline()
        weakref.finalize(self, self._worker.shutdown)
        config = self._lm.config
        self._info = types.GetInfoResponse(
            model_data=types.ModelData(
                arch=(config.architectures or [config.model_type])[0],
                model_name=base_model,
                tokenizer_id=str(model_dir),
            ),
            model_id=run_id,
            is_lora=spec is not None,
            lora_rank=spec.rank if spec is not None else None,
            model_name=base_model,
        )

    def close(self) -> None:
        """Cancel queued calls and wait for the one running: no thread of this client is in
        torch afterwards (one still there when the interpreter exits aborts the process)."""
        self._worker.shutdown(wait=True)

    @property
    def model(self) -> torch.nn.Module:
        """The model this client trains (for inspection; use the API to change it)."""
        return self._model

    # -- forward / backward -------------------------------------------------------------------

    def forward(
        self,
        data: list[types.Datum],
        loss_fn: types.LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """The loss and per-datum target logprobs, without gradients."""
        return self._submit_fwd(data, loss_fn, loss_fn_config, backward=False)

    def forward_backward(
        self,
        data: list[types.Datum],
        loss_fn: types.LossFnType,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> APIFuture[types.ForwardBackwardOutput]:
        """As `forward`, and add the loss's gradients to those accumulated since `optim_step`."""
        return self._submit_fwd(data, loss_fn, loss_fn_config, backward=True)

    def _submit_fwd(self, data, loss_fn, loss_fn_config, backward: bool):
        if not data:
            raise ValueError("No data provided")
        data = list(data)
        call = "forward_backward" if backward else "forward"
        tokens = sum(datum.model_input.length for datum in data)
        return self._submit(
            call, lambda: self._fwd(data, loss_fn, loss_fn_config, backward), tokens
        )

    def _submit(self, call: Call, fn: Callable[[], T], tokens: int = 0) -> APIFuture[T]:
        """Queue `fn` (of `tokens` tokens) behind this client's earlier calls, answered as the
        weather says."""
        return self._weather.training(call, self._timeline, lambda: self._worker.submit(fn), tokens)

    def _fwd(
        self,
        data: list[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None,
        backward: bool,
    ) -> types.ForwardBackwardOutput:
        spec, config = losses.resolve(loss_fn, loss_fn_config)
        examples = batches.examples(data, spec.inputs, self._vocab_size)
        logprobs_D: list[np.ndarray | None] = [None] * len(examples)
        total = 0.0
        lengths = [example.tokens.size for example in examples]
        for chunk in batches.chunks(lengths, self._tokens_per_chunk):
            batch = batches.collate([examples[i] for i in chunk], self._lm.device)
            with torch.set_grad_enabled(backward):
                logits_B_T_V, _ = forward(self._lm, batch.tokens_B_T)
                targets_B_T = batch.inputs_B_T["target_tokens"]
                target_logprobs_B_T = losses.selected_logprobs(logits_B_T_V, targets_B_T)
                inputs_B_T = batch.inputs_B_T
                loss_B_T = losses.per_token_loss(spec, config, target_logprobs_B_T, inputs_B_T)
                loss = torch.where(batch.mask_B_T, loss_B_T, 0.0).sum()
                if backward:
                    loss.backward()
            total += loss.item()
            rows_B_T = target_logprobs_B_T.detach().cpu().numpy()
            for row, (i, length) in enumerate(zip(chunk, batch.lengths_B, strict=True)):
                logprobs_D[i] = rows_B_T[row, :length]
        return types.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord",
            loss_fn_outputs=[
                {"logprobs": types.TensorData.from_numpy(logprobs)} for logprobs in logprobs_D
            ],
            metrics={"loss:sum": total},
        )

    # -- optimizer ----------------------------------------------------------------------------

    def optim_step(
        self,
        optim_params: types.AdamParams | OptimParamsBase | None = None,
        *,
        adam_params: types.AdamParams | None = None,
    ) -> APIFuture[types.OptimStepResponse]:
        """One AdamW step on the accumulated gradients, which it then zeroes."""
        if optim_params is not None and adam_params is not None:
            raise ValueError("Specify optim_params or legacy adam_params, not both")
        params = optim_params if optim_params is not None else adam_params
        if not isinstance(params, types.AdamParams | OptimParamsBase):
            raise TypeError("Expected AdamParams or OptimParamsBase")

        def step() -> types.OptimStepResponse:
            if not isinstance(params, types.AdamParams):
                raise ValueError(f"the local backend implements AdamW only, got {params.type!r}")
            metrics = adam_step(self._optimizer, self._params, params)
            return types.OptimStepResponse(metrics=metrics)

        return self._submit("optim_step", step)

    # -- checkpoints --------------------------------------------------------------------------

    def _save(
        self,
        kind: Kind,
        name: str,
        overwrite: bool,
        ttl_seconds: int | None,
        user_metadata: dict[str, str] | None,
    ) -> str:
        """Write a checkpoint atomically (a killed save leaves no half-written checkpoint)."""
        path = TinkerPath(self.model_id, kind, check_name(name))
        saved_at, expires_at = self._store.lifetime(ttl_seconds)  # first: a bad TTL writes nothing
        if self._store.find(path) is not None and not overwrite:
            raise FileExistsError(f"checkpoint {path} exists; pass overwrite=True to replace it")
        meta = CheckpointMeta(
            kind=kind,
            base_model=self._base_model,
            model_dir=self._store.relative(self._model_dir),
            lora=self._spec,
            user_metadata=user_metadata,
            ttl_seconds=ttl_seconds,
            saved_at=saved_at,
            expires_at=expires_at,
        )
        write_checkpoint(self._store.directory(path), meta, self._model, self._optimizer, str(path))
        return str(path)

    def save_state(
        self,
        name: str,
        ttl_seconds: int | None = None,
        overwrite: bool = False,
        user_metadata: dict[str, str] | None = None,
    ) -> APIFuture[types.SaveWeightsResponse]:
        """Save adapter weights and optimizer state; resume with
        `create_training_client_from_state_with_optimizer`."""
        return self._submit(
            "save_state",
            lambda: types.SaveWeightsResponse(
                path=self._save("weights", name, overwrite, ttl_seconds, user_metadata)
            ),
        )

    def save_weights_for_sampler(
        self,
        name: str,
        ttl_seconds: int | None = None,
        user_metadata: dict[str, str] | None = None,
    ) -> APIFuture[types.SaveWeightsForSamplerResponse]:
        return self._submit(
            "save_weights_for_sampler",
            lambda: types.SaveWeightsForSamplerResponse(
                path=self._save("sampler_weights", name, True, ttl_seconds, user_metadata)
            ),
        )

    def save_weights_and_get_sampling_client(
        self,
        name: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
        kind: types.SamplingClientKind = "snapshot",
    ) -> APIFuture["LocalSamplingClient"]:
        """A sampling client over a snapshot of the current weights (kept in memory)."""
        if kind != "snapshot":
            raise NotImplementedError(f"the local backend implements kind='snapshot' only: {kind}")
        return self._submit(
            "save_weights_for_sampler",
            lambda: self._sampler_for(frozen_snapshot(self._model)),
        )

    def create_sampling_client(
        self, model_path: str, retry_config: Any = None, record_stability_info: bool = False
    ) -> APIFuture["LocalSamplingClient"]:
        return self._sampler_at(model_path)

    # -- information --------------------------------------------------------------------------

    def get_info(self) -> types.GetInfoResponse:
        return self._info

    def get_tokenizer(self) -> Any:
        return self._tokenizer()

    def load_optimizer_state(self, checkpoint: Path) -> None:
        """The AdamW state (moments, step) of the checkpoint in directory `checkpoint`."""
        self._optimizer.load_state_dict(load_optimizer_state(checkpoint, self._lm.device))
