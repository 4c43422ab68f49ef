"""What the server knows: sessions, training models, samplers, and the requests in flight.

One `ServerState` wraps one `LocalServiceClient` and lives on the server's event loop: every
method is called there, blocking backend work runs on worker threads, and results come back to
the loop before they settle a request. Ids follow the cloud's shapes: a model is
`{session_id}:train:{model_seq_id}` (the SDK derives the same id itself when it creates a model
from a checkpoint), a sampler `{session_id}:sample:{sampling_session_seq_id}`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinker import types

from harness.backends.local import LocalSamplingClient, LocalServiceClient, LocalTrainingClient
from harness.backends.local.futures import run_now
from harness.backends.local.models import resolve_model_dir
from harness.weather import Call, Fired

from . import rest
from .future_store import Failure, FutureStore, Outcome, Payload
from .ordering import LoopTimers, SampleBatcher, SeqQueue
from .proto import (
    decode_forward_backward,
    encode_forward_backward_output,
    encode_sample_response,
    parse_forward_backward,
    token_count,
)

if TYPE_CHECKING:
    from .weather import ServerWeather

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# Mistakes of the caller; anything else the backend raises is the server's fault.
USER_ERRORS = (
    ValueError,
    TypeError,
    LookupError,
    FileNotFoundError,
    FileExistsError,
    NotImplementedError,
)


class HttpError(Exception):
    """A request refused outright, with an HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """How long things wait, how much is kept, and how much one request may ask for."""

    hold_s: float = 30.0
    """Longest a `retrieve_future` poll waits for its result."""
    keep_s: float = 300.0
    """How long a result stays retrievable after it settled."""
    gap_timeout_s: float = 120.0
    """How long a training request waits for a missing predecessor before it fails."""
    sample_window_s: float = 0.05
    """Quiet time after the last sampling request before a batch starts."""
    sample_max_wait_s: float = 1.0
    """Longest a sampling request waits for its batch to start."""
    session_timeout_s: float = 600.0
    """A session with no heartbeat for this long is dropped with its models and samplers."""
    max_samplers: int = 8
    """Samplers kept in memory; the least recently used beyond this are released."""
    # Request bounds. The SDK sends forward_backward in chunks of at most 1,024 Datums and about
    # 5 MB, so its requests stay well inside these; a client that asks for more is refused.
    max_body_bytes: int = 64 << 20
    """Largest request body on the wire (compressed or not)."""
    max_decoded_bytes: int = 64 << 20
    """Largest request body after zstd decompression."""
    max_json_bytes: int = 8 << 20
    """Largest JSON request body (a 32,768-token prompt is about 200 kB of JSON)."""
    max_datums: int = 1024
    """Datums in one forward_backward request."""
    max_request_tokens: int = 1 << 20
    """model_input tokens, summed over a forward_backward request's Datums."""
    max_num_samples: int = 256
    """num_samples of one sampling request."""
    max_sample_tokens: int = 32768
    """sampling_params.max_tokens of one sampling request."""


@dataclass
class Session:
    session_id: str
    last_seen: float
    finished: bool = False
    model_seq_ids: dict[int, str] = field(default_factory=dict)  # model_seq_id -> request id


@dataclass
class Model:
    model_id: str
    session_id: str
    client: LocalTrainingClient
    info: types.GetInfoResponse
    queue: SeqQueue


@dataclass
class Sampler:
    sampler_id: str
    session_id: str
    client: LocalSamplingClient
    model_path: str | None
    order: int  # creation order, so a batch holding several samplers is ordered as in process


class ServerState:
    def __init__(
        self,
        service: LocalServiceClient,
        served_models: Mapping[str, Path],
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        weather: ServerWeather | None = None,
    ):
        self.service = service
        self.weather = weather
        self.served_models = dict(served_models)
        self.limits = limits = limits or Limits()
        self.futures = FutureStore(limits.hold_s, limits.keep_s, clock)
        self._clock = clock
        self._timers = LoopTimers()
        self._batcher = SampleBatcher(
            limits.sample_window_s, limits.sample_max_wait_s, self._timers
        )
        # One at a time: LoRA init seeds torch's global RNG, which two threads would share.
        self._workers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-load")
        self._sessions: dict[str, Session] = {}
        self._models: dict[str, Model] = {}
        self._samplers: collections.OrderedDict[str, Sampler] = collections.OrderedDict()
        self._samplers_made = 0

    # -- sessions -----------------------------------------------------------------------------

    def create_session(self) -> str:
        self._drop_silent_sessions()
        session_id = uuid.uuid4().hex
        self._sessions[session_id] = Session(session_id, last_seen=self._clock())
        return session_id

    def heartbeat(self, session_id: str) -> None:
        self._session(session_id).last_seen = self._clock()

    def finish(self, session_id: str) -> None:
        self._session(session_id).finished = True
        self._release(session_id)

    def _session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise HttpError(404, f"session {session_id!r} does not exist on this server")
        if session.finished:
            raise HttpError(410, f"session {session_id} has finished")
        return session

    def _drop_silent_sessions(self) -> None:
        horizon = self._clock() - self.limits.session_timeout_s
        for session in list(self._sessions.values()):
            if not session.finished and session.last_seen < horizon:
                session.finished = True
                self._release(session.session_id)

    def _release(self, session_id: str) -> None:
        """Let a finished session's models and samplers go (their memory with them)."""
        for model_id in [m for m, model in self._models.items() if model.session_id == session_id]:
            del self._models[model_id]
        for sampler_id in [s for s, x in self._samplers.items() if x.session_id == session_id]:
            del self._samplers[sampler_id]

    # -- models -------------------------------------------------------------------------------

    def served_name(self, base_model: str) -> str:
        """The served model `base_model` names: its name, or a path to its directory."""
        if base_model in self.served_models:
            return base_model
        try:
            directory = resolve_model_dir(base_model)
        except (FileNotFoundError, ValueError):
            directory = None
        for name, served_directory in self.served_models.items():
            if directory == served_directory:
                return name
        raise ValueError(
            f"base model {base_model!r} is not served here; this server serves"
            f" {sorted(self.served_models)} (start it with --model=<your model>)"
        )

    def create_model(self, request: types.CreateModelRequest) -> tuple[str, str]:
        """(request id, model id) of a new LoRA model, created in the background."""
        lora = request.lora_config

        def create() -> LocalTrainingClient:
            if lora is None:
                raise ValueError("the local backend trains LoRA adapters only: send a lora_config")
            return self.service.create_lora_training_client(
                base_model=self.served_name(request.base_model),
                rank=lora.rank,
                seed=lora.seed,
                train_mlp=lora.train_mlp,
                train_attn=lora.train_attn,
                train_unembed=lora.train_unembed,
                optimizer=request.optimizer_config,
            ).result()

        fired = self._arrive("create_model")
        return self._new_model(request.session_id, request.model_seq_id, create, None, fired)

    def load_weights(self, request: types.LoadWeightsRequest) -> tuple[str, str]:
        """(request id, model id): a new model from a checkpoint, with or without optimizer."""
        if request.session_id is None or request.model_seq_id is None:
            return self._refuse_in_order(
                request.model_id,
                request.seq_id,
                "loading weights into an existing model is not supported by the local"
                " backend; create a new training client from the checkpoint instead"
                " (create_training_client_from_state[_with_optimizer])",
            )

        def load() -> LocalTrainingClient:
            base_model = request.base_model and self.served_name(request.base_model)
            if request.optimizer:
                future = self.service.create_training_client_from_state_with_optimizer(
                    request.path, base_model=base_model
                )
            else:
                future = self.service.create_training_client_from_state(
                    request.path, base_model=base_model, optimizer=request.optimizer_config
                )
            return future.result()

        fired = self._arrive("load_state")
        return self._new_model(request.session_id, request.model_seq_id, load, request.path, fired)

    def _new_model(
        self,
        session_id: str,
        model_seq_id: int,
        make: Callable[[], LocalTrainingClient],
        loaded_path: str | None,
        fired: Fired | None = None,
    ) -> tuple[str, str]:
        session = self._session(session_id)
        model_id = f"{session_id}:train:{model_seq_id}"
        if model_seq_id in session.model_seq_ids:  # a resend of a request already taken
            self._follow_weather(session.model_seq_ids[model_seq_id], fired)
            return session.model_seq_ids[model_seq_id], model_id
        request_id = self.futures.open()
        session.model_seq_ids[model_seq_id] = request_id
        self._follow_weather(request_id, fired)
        if not _applied(fired):
            self.futures.settle(request_id, _NOT_RUN)
            return request_id, model_id

        def register(client: LocalTrainingClient) -> Outcome:
            info = client.get_info().model_copy(update={"model_id": model_id})
            self._models[model_id] = Model(
                model_id,
                session_id,
                client,
                info,
                SeqQueue(1, self.limits.gap_timeout_s, self._timers),
            )
            if loaded_path is None:
                return _json(types.CreateModelResponse(model_id=model_id))
            return _json(types.LoadWeightsResponse(path=loaded_path, model_id=model_id))

        self._follow(request_id, self._workers.submit(make), register)
        return request_id, model_id

    def model(self, model_id: Any) -> Model:
        model = self._models.get(model_id) if isinstance(model_id, str) else None
        if model is None:
            raise HttpError(
                404,
                f"model {model_id!r} does not exist on this server (models live as long as"
                " their session; create one with create_lora_training_client)",
            )
        return model

    def get_info(self, model_id: str) -> types.GetInfoResponse:
        return self.model(model_id).info

    # -- training requests, in seq_id order ---------------------------------------------------

    def forward_backward(self, body: bytes | bytearray) -> tuple[str, str]:
        try:
            message = parse_forward_backward(body)
        except Exception as error:
            raise HttpError(
                400, f"forward_backward body is not a ForwardBackwardRequest: {error}"
            ) from error

        def run(client: LocalTrainingClient):
            check_forward_backward_size(message, self.limits)
            call = decode_forward_backward(message)
            method = client.forward if call.forward_only else client.forward_backward
            return method(call.data, call.loss_fn, call.loss_fn_config)

        fired = self._arrive("forward" if message.forward_only else "forward_backward")
        return self._in_order(message.model_id, message.seq_id, run, _result_payload, fired)

    def optim_step(self, body: dict[str, Any]) -> tuple[str, str]:
        def run(client: LocalTrainingClient):
            return client.optim_step(types.OptimStepRequest.model_validate(body).optim_params)

        fired = self._arrive("optim_step")
        return self._in_order(body.get("model_id"), body.get("seq_id"), run, _result_payload, fired)

    def save_weights(self, body: dict[str, Any]) -> tuple[str, str]:
        def run(client: LocalTrainingClient):
            request = types.SaveWeightsRequest.model_validate(body)
            if request.path is None:
                raise ValueError("save_weights needs a checkpoint name (path)")
            return client.save_state(
                request.path, request.ttl_seconds, request.overwrite, request.user_metadata
            )

        fired = self._arrive("save_state")
        return self._in_order(
            body.get("model_id"), body.get("seq_id"), run, self._saved(fired), fired
        )

    def save_weights_for_sampler(self, body: dict[str, Any]) -> tuple[str, str]:
        """Named: sampler weights saved to a path. Unnamed: a sampler over the current weights
        (what `save_weights_and_get_sampling_client` asks for)."""
        fired = self._arrive("save_weights_for_sampler")
        if body.get("path") is not None:

            def save(client: LocalTrainingClient):
                request = types.SaveWeightsForSamplerRequest.model_validate(body)
                return client.save_weights_for_sampler(
                    request.path, request.ttl_seconds, request.user_metadata
                )

            return self._in_order(
                body.get("model_id"), body.get("seq_id"), save, self._saved(fired), fired
            )

        session_id = self.model(body.get("model_id")).session_id

        def snapshot(client: LocalTrainingClient):
            request = types.SaveWeightsForSamplerRequest.model_validate(body)
            if request.sampling_session_seq_id is None:
                raise ValueError(
                    "save_weights_for_sampler needs a path or a sampling_session_seq_id"
                )
            return client.save_weights_and_get_sampling_client(kind=request.kind)

        def register(client: LocalSamplingClient) -> Outcome:
            sampler_id = f"{session_id}:sample:{body['sampling_session_seq_id']}"
            self._add_sampler(sampler_id, session_id, client, None)
            return _json(
                types.SaveWeightsForSamplerResponseInternal(sampling_session_id=sampler_id)
            )

        return self._in_order(body.get("model_id"), body.get("seq_id"), snapshot, register, fired)

    def _in_order(
        self,
        model_id: str | None,
        seq_id: int | None,
        run: Callable[[LocalTrainingClient], Any],
        settle: Callable[[Any], Outcome],
        fired: Fired | None = None,
    ) -> tuple[str, str]:
        """Queue `run(client)` (which returns a backend future) behind the model's earlier
        requests; errors in `run` itself fail the request in its turn. A fault `fired`
        before it is applied makes it take its turn without running."""
        if not isinstance(model_id, str) or not isinstance(seq_id, int):
            raise HttpError(400, "a training request needs a model_id and an integer seq_id")
        model = self.model(model_id)
        if (existing := model.queue.request_id(seq_id)) is not None:
            self._follow_weather(existing, fired)  # a fault on a resend strikes what it resends
            return existing, model_id
        request_id = self.futures.open()
        self._follow_weather(request_id, fired)
        if not _applied(fired):
            run, settle = _skipped, lambda _: _NOT_RUN

        def start() -> None:
            try:
                future = run(model.client)
            except Exception as error:
                self.futures.settle(request_id, failure(error))
            else:
                self._follow(request_id, future.future(), settle)

        model.queue.submit(seq_id, request_id, start, lambda m: self._fail(request_id, m))
        return request_id, model_id

    def _refuse_in_order(self, model_id: str | None, seq_id: int | None, message: str):
        def run(client: LocalTrainingClient):
            raise NotImplementedError(message)

        return self._in_order(model_id, seq_id, run, _result_payload)

    # -- sampling -----------------------------------------------------------------------------

    async def create_sampling_session(self, request: types.CreateSamplingSessionRequest) -> str:
        session = self._session(request.session_id)

        def create() -> LocalSamplingClient:
            base_model = request.base_model and self.served_name(request.base_model)
            return self.service.create_sampling_client(
                model_path=request.model_path, base_model=base_model
            ).result()

        try:
            client = await asyncio.wrap_future(self._workers.submit(create))
        except FileNotFoundError as error:
            raise HttpError(404, str(error)) from error
        except USER_ERRORS as error:
            raise HttpError(400, str(error)) from error
        sampler_id = f"{session.session_id}:sample:{request.sampling_session_seq_id}"
        self._add_sampler(sampler_id, session.session_id, client, request.model_path)
        return sampler_id

    def _add_sampler(
        self, sampler_id: str, session_id: str, client: LocalSamplingClient, path: str | None
    ) -> None:
        self._samplers_made += 1
        self._samplers[sampler_id] = Sampler(
            sampler_id, session_id, client, path, self._samplers_made
        )
        while len(self._samplers) > self.limits.max_samplers:
            self._samplers.popitem(last=False)

    def sampler(self, sampler_id: str) -> Sampler:
        sampler = self._samplers.get(sampler_id)
        if sampler is None:
            raise HttpError(
                404,
                f"sampling session {sampler_id!r} does not exist on this server (it keeps the"
                f" {self.limits.max_samplers} most recently used samplers of live sessions)",
            )
        self._samplers.move_to_end(sampler_id)
        return sampler

    def get_sampler(self, sampler_id: str) -> types.GetSamplerResponse:
        sampler = self.sampler(sampler_id)
        return types.GetSamplerResponse(
            sampler_id=sampler_id,
            base_model=sampler.client.get_base_model(),
            model_path=sampler.model_path,
        )

    def sample(self, request: types.SampleRequest) -> tuple[str, list[str]]:
        """(request id, one sequence id per sample); the request joins the next batch."""
        if request.sampling_session_id is None or request.seq_id is None:
            raise HttpError(
                400, "asample needs a sampling_session_id and a seq_id (create a sampler first)"
            )
        sampler = self.sampler(request.sampling_session_id)
        fired = self._arrive("sample")
        request_id = self.futures.open()
        self._follow_weather(request_id, fired)
        prefix = f"{sampler.sampler_id}:{request.seq_id}"
        # Judged now, so a huge num_samples never becomes a list of ids; failed in its turn.
        refusal = sample_size_refusal(request, self.limits)

        def start() -> None:
            if not _applied(fired):
                self.futures.settle(request_id, _NOT_RUN)
                return
            try:
                if refusal is not None:
                    raise ValueError(refusal)
                future = sampler.client.sample(
                    request.prompt,
                    request.num_samples,
                    request.sampling_params,
                    include_prompt_logprobs=bool(request.prompt_logprobs),
                    topk_prompt_logprobs=request.topk_prompt_logprobs,
                    topk_sample_logprobs=request.topk_sample_logprobs,
                    target_prompt_logprobs=request.target_prompt_logprobs,
                    prompt_alt_tokens_k=request.prompt_alt_tokens_k,
                    prompt_logprobs_last_n=request.prompt_logprobs_last_n,
                )
            except Exception as error:
                self.futures.settle(request_id, failure(error))
            else:
                self._follow(request_id, future.future(), _result_payload)

        self._batcher.submit(sampler.order, request.seq_id, start)
        if refusal is not None:  # the request fails, so the SDK never reads its ids
            return request_id, []
        return request_id, [f"{prefix}:{i}" for i in range(request.num_samples)]

    # -- training runs and checkpoints: the RestClient's calls --------------------------------

    def training_run(self, run_id: str) -> types.TrainingRun:
        records = self.service.store.saved(run_id)
        if not records:
            raise HttpError(
                404,
                f"training run {run_id!r} has no checkpoints on this server (a run is known"
                " here once it has saved one)",
            )
        return rest.training_run(run_id, records)

    def training_runs(self, limit: int, offset: int) -> types.TrainingRunsResponse:
        runs = rest.training_runs_newest_first(self.service.store.saved())
        window, cursor = _page(len(runs), limit, offset)
        return types.TrainingRunsResponse(training_runs=runs[window], cursor=cursor)

    def checkpoints(
        self, run_id: str | None, limit: int | None = None, offset: int = 0
    ) -> types.CheckpointsListResponse:
        """One run's checkpoints (all of them), or every run's (a page of them)."""
        listed = rest.checkpoints_newest_first(self.service.store.saved(run_id))
        if limit is None:
            return types.CheckpointsListResponse(checkpoints=listed)
        window, cursor = _page(len(listed), limit, offset)
        return types.CheckpointsListResponse(checkpoints=listed[window], cursor=cursor)

    def delete_checkpoint(self, run_id: str, checkpoint_id: str) -> None:
        _checkpoint_call(self.service.store.delete, f"tinker://{run_id}/{checkpoint_id}")

    def set_checkpoint_ttl(self, run_id: str, checkpoint_id: str, ttl: int | None) -> None:
        path = f"tinker://{run_id}/{checkpoint_id}"
        _checkpoint_call(lambda p: self.service.store.set_ttl(p, ttl), path)

    # -- weather ------------------------------------------------------------------------------

    def _arrive(self, call: Call) -> Fired | None:
        """The fault that strikes this request (one `before` with an HTTP effect strikes
        now: an HttpError or a dropped connection is raised, or the process dies)."""
        return self.weather.arrive(call) if self.weather is not None else None

    def _follow_weather(self, request_id: str, fired: Fired | None) -> None:
        if self.weather is not None:
            self.weather.follow(request_id, fired)

    async def answered(self, request_id: str) -> None:
        """Before a request's POST answers: a fault after it was applied strikes now."""
        if self.weather is not None:
            await self.weather.answered(request_id, lambda: self.futures.finished(request_id))

    async def retrieved(self, request_id: str, outcome: Outcome | None) -> Outcome | None:
        if self.weather is None:
            return outcome
        return await self.weather.retrieved(request_id, outcome, self.futures.hold)

    def _saved(self, fired: Fired | None) -> Callable[[Any], Outcome]:
        """A save's result as it goes back; a `checkpoint_expired` fault first lets the
        checkpoint it wrote expire as the profile says."""
        if fired is None or fired.fault.error != "checkpoint_expired" or self.weather is None:
            return _result_payload
        seconds = self.weather.weather.seconds(fired.fault.expires_after_s)
        store = self.service.store

        def expire(result: Any) -> Outcome:
            store.set_expires_at(result.path, store.now() + seconds)
            return _result_payload(result)

        return expire

    # -- results ------------------------------------------------------------------------------

    def _follow(self, request_id: str, future: Future, settle: Callable[[Any], Outcome]) -> None:
        """Settle `request_id` on the loop with `settle(result)` once `future` is done."""
        loop = asyncio.get_running_loop()

        def done(finished: Future) -> None:
            # A closed loop means the server stopped, and failed the request when it did.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._settle_from, request_id, finished, settle)

        future.add_done_callback(done)

    def _settle_from(
        self, request_id: str, finished: Future, settle: Callable[[Any], Outcome]
    ) -> None:
        if finished.cancelled():  # by `close`: the request was failed then
            return
        error = finished.exception()
        if error is None:
            try:
                outcome = settle(finished.result())
            except Exception as conversion_error:
                outcome = failure(conversion_error)
        else:
            outcome = failure(error)
        self.futures.settle(request_id, outcome)

    def _fail(self, request_id: str, message: str) -> None:
        self.futures.settle(request_id, Failure(message, "server"))

    def close(self, message: str) -> None:
        """Fail everything in flight with `message` and refuse new requests the same way."""
        self.futures.close(Failure(message, "server"))
        self._workers.shutdown(wait=False, cancel_futures=True)
        self.service.close()


def _page(total: int, limit: int, offset: int) -> tuple[slice, types.Cursor]:
    try:
        return rest.page(total, limit, offset)
    except ValueError as error:
        raise HttpError(400, str(error)) from error


def _checkpoint_call(call: Callable[[str], None], path: str) -> None:
    """`call(path)`, its mistakes as HTTP refusals: 404 for a missing checkpoint, else 400."""
    try:
        call(path)
    except FileNotFoundError as error:
        raise HttpError(404, str(error)) from error
    except ValueError as error:
        raise HttpError(400, str(error)) from error


def check_forward_backward_size(message: Any, limits: Limits) -> None:
    """A ValueError if a forward_backward request asks for more than `limits` allow."""
    if len(message.data) > limits.max_datums:
        raise ValueError(
            f"forward_backward request holds {len(message.data):,} Datums; this server takes at"
            f" most {limits.max_datums:,} per request (send them in several requests)"
        )
    tokens = token_count(message)
    if tokens > limits.max_request_tokens:
        raise ValueError(
            f"forward_backward request holds {tokens:,} model_input tokens; this server takes"
            f" at most {limits.max_request_tokens:,} per request (send fewer Datums at once)"
        )


def sample_size_refusal(request: types.SampleRequest, limits: Limits) -> str | None:
    """Why a sampling request asks for more than `limits` allow, or None."""
    if request.num_samples > limits.max_num_samples:
        return (
            f"num_samples={request.num_samples:,} exceeds this server's limit of"
            f" {limits.max_num_samples:,} per request (send several requests)"
        )
    max_tokens = request.sampling_params.max_tokens
    if max_tokens is not None and max_tokens > limits.max_sample_tokens:
        return (
            f"sampling_params.max_tokens={max_tokens:,} exceeds this server's limit of"
            f" {limits.max_sample_tokens:,}"
        )
    return None


# What a request a fault kept from running settles with; the fault decides what polls answer.
_NOT_RUN = Payload(b"{}", JSON)


def _applied(fired: Fired | None) -> bool:
    return fired is None or fired.fault.when == "after"


def _skipped(client: LocalTrainingClient):
    return run_now(lambda: None)


def failure(error: BaseException) -> Failure:
    if isinstance(error, USER_ERRORS):
        return Failure(str(error) or type(error).__name__, "user")
    return Failure(f"{type(error).__name__}: {error}", "server")


def _json(model: Any) -> Payload:
    return Payload(model.model_dump_json(exclude_none=True).encode(), JSON)


def _result_payload(result: Any) -> Payload:
    """The wire form of a backend result: protobuf where the SDK requires it, else JSON."""
    if isinstance(result, types.ForwardBackwardOutput):
        return Payload(encode_forward_backward_output(result), PROTOBUF)
    if isinstance(result, types.SampleResponse):
        return Payload(encode_sample_response(result), PROTOBUF)
    return _json(result)
