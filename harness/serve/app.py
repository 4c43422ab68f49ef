"""The HTTP face of `ServerState`: Tinker's `/api/v1` endpoints as the SDK 0.38 calls them.

Bodies are JSON except `forward_backward`'s (protobuf, maybe zstd-compressed), each read within
the state's `Limits` (`bodies`); results of `forward_backward` and `asample` go back as
protobuf, the rest as JSON. A refused request answers `{"detail": message}` with a status the
SDK does not retry (400, 401, 404, 410, 413, 415), so a mistake surfaces as the SDK's own error
type at once. The `training_runs` and `checkpoints` endpoints are `tinker.RestClient`'s. An
endpoint the server lacks answers 404 naming it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, TypeVar

import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from tinker import types

from .bodies import decode, parse_json_object, read_bounded, too_large
from .future_store import Failure, Payload
from .state import JSON, HttpError, Limits, ServerState
from .weather import ConnectionDropped, dropped_answer

API = "/api/v1"
Model = TypeVar("Model", bound=pydantic.BaseModel)

# Flags for the SDK (see tinker.types.ClientConfigResponse): plain API keys, httpx's own
# transport (so every byte goes through Python's sockets, where tests and recordings see it),
# and the SDK's zstd-compressed forward_backward bodies; the rest at the SDK's defaults.
CLIENT_CONFIG = types.ClientConfigResponse(
    pjwt_auth_enabled=False, use_pyqwest_transport=False, proto_compress_fwdbwd=True
)


def create_app(state: ServerState, api_key: str | None) -> FastAPI:
    """The app; with `api_key`, requests must carry it in `X-API-Key` (else any `tml-` key)."""
    app = FastAPI(
        title="harness local Tinker server", docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if request.url.path != f"{API}/healthz" and not _authorized(request, api_key):
            return _refusal(401, "missing or wrong X-API-Key")
        return await call_next(request)

    @app.exception_handler(HttpError)
    async def refused(request: Request, error: HttpError) -> JSONResponse:
        return _refusal(error.status, error.message)

    @app.exception_handler(ConnectionDropped)
    async def dropped(request: Request, error: ConnectionDropped) -> Response:
        return dropped_answer()  # the weather's: the answer breaks off after its headers

    # -- handshake and sessions ---------------------------------------------------------------

    @app.post(f"{API}/client/config")
    async def client_config() -> Response:
        return _model(CLIENT_CONFIG)

    @app.post(f"{API}/client/dynamic_config")
    async def client_dynamic_config() -> Response:
        return _model(types.ClientDynamicConfigResponse())

    @app.post(f"{API}/create_session")
    async def create_session(request: Request) -> Response:
        _parse(types.CreateSessionRequest, await _json(request, state.limits))
        return _model(types.CreateSessionResponse(session_id=state.create_session()))

    @app.post(f"{API}/session_heartbeat")
    async def session_heartbeat(request: Request) -> Response:
        state.heartbeat(
            _parse(types.SessionHeartbeatRequest, await _json(request, state.limits)).session_id
        )
        return _model(types.SessionHeartbeatResponse())

    @app.post(API + "/sessions/{session_id}/finish")
    async def finish_session(session_id: str) -> Response:
        state.finish(session_id)
        return JSONResponse({})

    @app.post(f"{API}/telemetry")
    async def telemetry() -> Response:
        return _model(types.TelemetryResponse(status="accepted"))  # accepted and dropped

    @app.get(f"{API}/healthz")
    async def healthz() -> Response:
        return _model(types.HealthResponse(status="ok"))

    @app.get(f"{API}/get_server_capabilities")
    async def get_server_capabilities() -> Response:
        return _model(
            types.GetServerCapabilitiesResponse(
                supported_models=[
                    types.SupportedModel(model_name=name, trainable=True, sampleable=True)
                    for name in state.served_models
                ]
            )
        )

    # -- models and training ------------------------------------------------------------------

    @app.post(f"{API}/create_model")
    async def create_model(request: Request) -> Response:
        body = _parse(types.CreateModelRequest, await _json(request, state.limits))
        return await _future(state, *state.create_model(body))

    @app.post(f"{API}/load_weights")
    async def load_weights(request: Request) -> Response:
        return await _future(
            state,
            *state.load_weights(
                _parse(types.LoadWeightsRequest, await _json(request, state.limits))
            ),
        )

    @app.post(f"{API}/get_info")
    async def get_info(request: Request) -> Response:
        body = _parse(types.GetInfoRequest, await _json(request, state.limits))
        return _model(state.get_info(body.model_id))

    @app.post(f"{API}/forward_backward")
    async def forward_backward(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/x-protobuf"):
            raise HttpError(
                415, f"forward_backward takes application/x-protobuf bodies, not {content_type!r}"
            )
        limits = state.limits
        body = await _body(request, limits.max_body_bytes, limits.max_decoded_bytes)
        return await _future(state, *state.forward_backward(body))

    # JSON training requests, validated in their seq_id turn: a malformed one leaves no gap.
    for submit in (state.optim_step, state.save_weights, state.save_weights_for_sampler):
        app.add_api_route(f"{API}/{submit.__name__}", _queued(submit, state), methods=["POST"])

    # -- sampling -----------------------------------------------------------------------------

    @app.post(f"{API}/create_sampling_session")
    async def create_sampling_session(request: Request) -> Response:
        body = _parse(types.CreateSamplingSessionRequest, await _json(request, state.limits))
        sampler_id = await state.create_sampling_session(body)
        return _model(types.CreateSamplingSessionResponse(sampling_session_id=sampler_id))

    @app.get(API + "/samplers/{sampler_id}")
    async def get_sampler(sampler_id: str) -> Response:
        return _model(state.get_sampler(sampler_id))

    @app.post(f"{API}/asample")
    async def asample(request: Request) -> Response:
        request_id, sequence_ids = state.sample(
            _parse(types.SampleRequest, await _json(request, state.limits))
        )
        await state.answered(request_id)
        return _model(
            types.UntypedAPIFuture(request_id=request_id, sample_sequence_ids=sequence_ids)
        )

    # -- results ------------------------------------------------------------------------------

    @app.post(f"{API}/retrieve_future")
    async def retrieve_future(request: Request) -> Response:
        request_id = _parse(
            types.FutureRetrieveRequest, await _json(request, state.limits)
        ).request_id
        if request_id not in state.futures:
            raise HttpError(
                404,
                f"request {request_id!r} is unknown here (results are kept"
                f" {state.limits.keep_s:.0f} s after they settle, and not across restarts)",
            )
        outcome = await state.retrieved(request_id, await state.futures.retrieve(request_id))
        if outcome is None:
            return JSONResponse(
                {"type": "try_again", "request_id": request_id, "queue_state": "active"}
            )
        if isinstance(outcome, Failure):
            return JSONResponse({"error": outcome.message, "category": outcome.category})
        assert isinstance(outcome, Payload)
        return Response(outcome.body, media_type=outcome.media_type)

    # -- training runs and checkpoints (tinker.RestClient) -------------------------------------

    @app.get(f"{API}/training_runs")
    async def list_training_runs(limit: int = 20, offset: int = 0) -> Response:
        return _model(state.training_runs(limit, offset))

    @app.get(API + "/training_runs/{run_id}")
    async def get_training_run(run_id: str) -> Response:
        return _model(state.training_run(run_id))

    @app.get(API + "/training_runs/{run_id}/checkpoints")
    async def list_checkpoints(run_id: str) -> Response:
        return _model(state.checkpoints(run_id))

    @app.get(f"{API}/checkpoints")
    async def list_user_checkpoints(limit: int = 100, offset: int = 0) -> Response:
        return _model(state.checkpoints(None, limit, offset))

    @app.put(API + "/training_runs/{run_id}/checkpoints/{checkpoint_id:path}/ttl")
    async def set_checkpoint_ttl(run_id: str, checkpoint_id: str, request: Request) -> Response:
        body = await _json(request, state.limits)
        ttl = body.get("ttl_seconds")
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool)):
            raise HttpError(400, f"ttl_seconds must be an integer or null, got {ttl!r}")
        state.set_checkpoint_ttl(run_id, checkpoint_id, ttl)
        return JSONResponse({})

    @app.delete(API + "/training_runs/{run_id}/checkpoints/{checkpoint_id:path}")
    async def delete_checkpoint(run_id: str, checkpoint_id: str) -> Response:
        state.delete_checkpoint(run_id, checkpoint_id)
        return JSONResponse({})

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def not_implemented(path: str, request: Request) -> Response:
        raise HttpError(
            404,
            f"{request.method} /{path} is not implemented by the local Tinker server"
            " (harness.serve); it serves the training, sampling and session endpoints of the"
            " tinker SDK 0.38",
        )

    return app


def _authorized(request: Request, api_key: str | None) -> bool:
    given = request.headers.get("x-api-key", "")
    if api_key is None:
        return given.startswith("tml-")
    return hmac.compare_digest(given.encode(), api_key.encode())


def _refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


async def _body(request: Request, max_wire: int, max_decoded: int) -> bytearray:
    """The request's body, at most `max_wire` bytes as sent and `max_decoded` decoded (413
    past either); a declared length past the bound is refused before anything is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_wire:
        raise too_large("the request body", max_wire)
    body = await read_bounded(request.stream(), max_wire, "the request body")
    return decode(body, request.headers.get("content-encoding", "identity"), max_decoded)


async def _json(request: Request, limits: Limits) -> dict[str, Any]:
    return parse_json_object(await _body(request, limits.max_json_bytes, limits.max_json_bytes))


def _parse(model: type[Model], body: dict[str, Any]) -> Model:
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as error:
        raise HttpError(400, f"invalid {model.__name__}: {error}") from error


def _model(model: pydantic.BaseModel) -> Response:
    return Response(model.model_dump_json(exclude_none=True), media_type=JSON)


def _queued(submit: Callable[[dict[str, Any]], tuple[str, str]], state: ServerState):
    """An endpoint handing its JSON body to `submit`, which queues it on its model."""

    async def endpoint(request: Request) -> Response:
        return await _future(state, *submit(await _json(request, state.limits)))

    return endpoint


async def _future(state: ServerState, request_id: str, model_id: str) -> Response:
    """The answer to a request that returns a future (after the weather had its say)."""
    await state.answered(request_id)
    return _model(types.UntypedAPIFuture(request_id=request_id, model_id=model_id))
