"""The HTTP API: TensorFlow Serving's REST routes on Starlette, plus health and metrics.

=======  =============================================  ===========================================
POST     /v1/models/{name}[/versions/{v}]:predict        ``{"instances"|"inputs": ...}`` -> predictions
GET      /v1/models/{name}[/versions/{v}]                status (``model_version_status``)
GET      /v1/models/{name}[/versions/{v}]/metadata       inputs, outputs, size, sparsity, quantization
GET      /healthz                                        200 while a model is loaded (no token needed; lists models only with one)
GET      /metrics                                        Prometheus text format
GET      /v1/models/{name}[/versions/{v}]/drift          drift scores against profile.json (404 without one)
POST     /v1/models/{name}[/versions/{v}]/feedback       ``{"request_id": ..., "labels": [...]}``: late labels
=======  =============================================  ===========================================

Every error is a JSON ``{"error": "..."}`` with a 4xx/5xx status and the server keeps serving.

Example::

    server = ModelServer(ServeConfig(model_dir=Path("models")))
    server.load_models()
    uvicorn.run(server.app, host="127.0.0.1", port=8501)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prunekit.core.optional import require

require("starlette", "serve")

from starlette.applications import Starlette  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from prunekit.errors import ConfigError  # noqa: E402
from prunekit.serve.auth import check_bearer  # noqa: E402
from prunekit.serve.batching import MicroBatcher, OverloadedError  # noqa: E402
from prunekit.serve.codec import InvalidRequestError, decode_request, dump_json, encode_response, parse_json  # noqa: E402
from prunekit.serve.config import ServeConfig  # noqa: E402
from prunekit.serve.drift import DriftCollector, DriftMonitor, UnknownPredictionError  # noqa: E402
from prunekit.serve.guard import ArtifactGuard  # noqa: E402
from prunekit.serve.metrics import ServeMetrics  # noqa: E402
from prunekit.serve.repository import LoadedModel, ModelNotFoundError, ModelRepository, SyncReport  # noqa: E402
from prunekit.serve.runtimes import InferenceInputError, RuntimeOptions  # noqa: E402

log = logging.getLogger("prunekit.serve")
access_log = logging.getLogger("prunekit.serve.access")

_OFFLOAD_BYTES = 256 * 1024  # bodies larger than this are parsed on a worker thread
_OFFLOAD_VALUES = 64 * 1024  # outputs with more values than this are encoded on a worker thread
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class HTTPError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class _Call:
    """What one request did, for its metrics and access-log line."""

    endpoint: str
    model: str = ""
    version: int | None = None
    rows: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    request_id: str = ""


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dump_json(payload), status_code=status, media_type="application/json", headers=headers)


def _version(request: Request) -> int | None:
    raw = request.path_params.get("version")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise HTTPError(400, f"version must be a non-negative integer, got {raw!r}")
    return int(raw)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = f"request body exceeds the limit of {limit} bytes (prunekit serve --max-body-bytes)"
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(400, f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise HTTPError(413, too_large, {"Connection": "close"})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, too_large, {"Connection": "close"})
        chunks.append(chunk)
    return b"".join(chunks)


class ModelServer:
    """The models, their batchers, metrics and the ASGI app serving them (see the module docstring).

    Example::

        server = ModelServer(ServeConfig(model_dir=Path("models"), port=0))
        server.load_models()         # raises ConfigError when no model can be loaded
        app = server.app             # hand to uvicorn or any ASGI server
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.repository = ModelRepository(
            config.model_dir,
            config.keep_versions,
            RuntimeOptions(intra_op_threads=config.intra_op_threads),
            ArtifactGuard(config.public_key, config.encryption_key),
        )
        self.metrics = ServeMetrics()
        self._batchers: dict[LoadedModel, MicroBatcher] = {}
        self._monitors: dict[LoadedModel, DriftMonitor] = {}
        self.metrics.register(DriftCollector(self._live_monitors))
        self._executor: ThreadPoolExecutor | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._loaded_once = False
        self.url: str | None = None  # set by whoever binds the socket; logged when ready
        self.app = self._build_app()

    # -- models ------------------------------------------------------------------------------
    def load_models(self) -> SyncReport:
        """Load the model directory once; raise :class:`ConfigError` if no model can be served."""
        report = self.repository.sync(initial=True)
        self._apply(report)
        self._loaded_once = True
        if not self.repository.names():
            reasons = "; ".join(message for _, _, message in report.failed) or (
                f"found no <name>/<version>/model.onnx or model.tflite under {self.config.model_dir}"
            )
            raise ConfigError(f"no model could be loaded from {self.config.model_dir}: {reasons}")
        return report

    def _apply(self, report: SyncReport) -> None:
        for model in report.loaded:
            self.metrics.record_reload(model.name, "loaded")
        for name, _, _ in report.failed:
            self.metrics.record_reload(name, "refused")
        for model in report.unloaded:
            self.metrics.record_reload(model.name, "unloaded")
            self._batchers.pop(model, None)  # in-flight requests keep their reference and finish
            self._monitors.pop(model, None)
        known = set(self.repository.names())
        for name in known:
            self.metrics.set_latest_version(name, self.repository.get(name).version)
        for model in report.unloaded:
            if model.name not in known:
                self.metrics.set_latest_version(model.name, None)

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            try:
                report = await asyncio.to_thread(self.repository.sync)
            except ConfigError as exc:  # e.g. the directory vanished: keep serving what is loaded
                log.error("model directory scan failed", extra={"error": str(exc)})
                continue
            except Exception:
                log.exception("model directory scan failed", extra={"path": str(self.config.model_dir)})
                continue
            self._apply(report)

    def _batcher(self, model: LoadedModel) -> MicroBatcher:
        batcher = self._batchers.get(model)
        if batcher is None:
            runtime = model.runtime
            stackable = all(s.batched for s in runtime.inputs) and all(s.shape is None or s.batched for s in runtime.outputs)
            assert self._executor is not None
            batcher = MicroBatcher(
                runtime.run,
                self._executor,
                max_batch_size=self.config.max_batch_size if self.config.batching and stackable else 1,
                max_wait_s=self.config.batch_timeout_ms / 1000 if self.config.batching else 0.0,
                max_concurrent_batches=self.config.inference_threads,
                max_queued_requests=self.config.max_queued_requests,
                on_batch=lambda rows, seconds: self.metrics.record_batch(model.name, model.version, rows, seconds),
            )
            if model in self.repository.loaded():
                self._batchers[model] = batcher
        return batcher

    def _monitor(self, model: LoadedModel) -> DriftMonitor | None:
        """The drift monitor of a loaded version with a profile (None without one or when monitoring is off)."""
        if model.profile is None or not self.config.drift_monitoring:
            return None
        monitor = self._monitors.get(model)
        if monitor is None:
            runtime = model.runtime
            monitor = DriftMonitor(model.profile, runtime.inputs, runtime.outputs, self.config.drift, model.name, model.version)
            if model in self.repository.loaded():
                self._monitors[model] = monitor
        return monitor

    def _live_monitors(self) -> list[DriftMonitor]:
        return [m for m in (self._monitor(model) for model in self.repository.loaded()) if m is not None]

    # -- app -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._executor = ThreadPoolExecutor(self.config.inference_threads, thread_name_prefix="prunekit-infer")
        if not self._loaded_once:
            await asyncio.to_thread(self.load_models)
        if self.config.poll_interval_s > 0:
            self._reloader = asyncio.get_running_loop().create_task(self._reload_forever())
        models = {name: self.repository.get(name).version for name in self.repository.names()}
        log.info("server ready", extra={"url": self.url, "models": models})
        try:
            yield
        finally:
            if self._reloader is not None:
                self._reloader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reloader
            self._executor.shutdown(wait=True)
            log.info("server stopped")

    def _build_app(self) -> Starlette:
        e = self._endpoint
        routes = [
            Route("/healthz", e("healthz", self._healthz, public=True), methods=["GET"]),
            Route("/metrics", e("metrics", self._metrics), methods=["GET"]),
            Route("/v1/models/{name}:predict", e("predict", self._predict), methods=["POST"]),
            Route("/v1/models/{name}/versions/{version}:predict", e("predict", self._predict), methods=["POST"]),
            Route("/v1/models/{name}", e("status", self._status), methods=["GET"]),
            Route("/v1/models/{name}/versions/{version}", e("status", self._status), methods=["GET"]),
            Route("/v1/models/{name}/metadata", e("metadata", self._metadata), methods=["GET"]),
            Route("/v1/models/{name}/versions/{version}/metadata", e("metadata", self._metadata), methods=["GET"]),
            Route("/v1/models/{name}/drift", e("drift", self._drift), methods=["GET"]),
            Route("/v1/models/{name}/versions/{version}/drift", e("drift", self._drift), methods=["GET"]),
            Route("/v1/models/{name}/feedback", e("feedback", self._feedback), methods=["POST"]),
            Route("/v1/models/{name}/versions/{version}/feedback", e("feedback", self._feedback), methods=["POST"]),
        ]
        return Starlette(routes=routes, lifespan=self._lifespan, exception_handlers={HTTPException: self._unrouted})

    async def _unrouted(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        if exc.status_code == 404:
            message += "; predict with POST /v1/models/<name>:predict"
        self.metrics.record_request("other", "", exc.status_code, 0.0)
        self._log_access(request, _Call("other"), exc.status_code, 0.0, "-")
        return _json({"error": message}, exc.status_code, dict(exc.headers or {}))

    def _endpoint(
        self, name: str, handler: Callable[[Request, _Call], Awaitable[Response]], public: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            call = _Call(name)
            given_id = request.headers.get("x-request-id", "")
            request_id = given_id if _REQUEST_ID.match(given_id) else uuid.uuid4().hex[:16]
            call.request_id = request_id
            try:
                if self.config.token is not None and not public:
                    refusal = check_bearer(request.headers.get("authorization"), self.config.token)
                    if refusal is not None:
                        raise HTTPError(401, refusal, {"WWW-Authenticate": 'Bearer realm="prunekit"'})
                response = await handler(request, call)
            except HTTPError as exc:
                response = _json({"error": exc.message}, exc.status, exc.headers)
            except (ModelNotFoundError, UnknownPredictionError) as exc:
                response = _json({"error": str(exc)}, 404)
            except (InvalidRequestError, InferenceInputError) as exc:
                response = _json({"error": str(exc)}, 400)
            except OverloadedError as exc:
                response = _json({"error": f"model {call.model!r} version {call.version}: {exc}"}, 503, {"Retry-After": "1"})
            except Exception as exc:  # a bug or a runtime failure: answer 500 and keep serving
                log.exception("request failed", extra={"request_id": request_id, "path": request.url.path})
                where = f"model {call.model!r} version {call.version}" if call.model else request.url.path
                response = _json({"error": f"internal error while serving {where}: {type(exc).__name__}: {exc}"}, 500)
            response.headers["X-Request-ID"] = request_id
            for key, value in call.headers.items():
                response.headers[key] = value
            seconds = time.perf_counter() - started
            known = call.model if call.model in self.repository.names() else ""
            self.metrics.record_request(name, known, response.status_code, seconds)
            self._log_access(request, call, response.status_code, seconds, request_id)
            return response

        return endpoint

    def _log_access(self, request: Request, call: _Call, status: int, seconds: float, request_id: str) -> None:
        if not self.config.access_log:
            return
        fields: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": request_id,
            "client": request.client.host if request.client else None,
        }
        if call.model:
            fields.update(model=call.model, version=call.version)
        if call.rows is not None:
            fields["rows"] = call.rows
        access_log.info("request", extra=fields)

    # -- handlers ------------------------------------------------------------------------------
    async def _healthz(self, request: Request, call: _Call) -> Response:
        names = self.repository.names()
        body: dict[str, Any] = {"status": "ok" if names else "unavailable"}
        # public for load balancers, but which models are served is only told to token holders
        if self.config.token is None or check_bearer(request.headers.get("authorization"), self.config.token) is None:
            body["models"] = names
        return _json(body, 200 if names else 503)

    async def _metrics(self, request: Request, call: _Call) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    def _watched(self, request: Request, call: _Call) -> DriftMonitor:
        call.model = request.path_params["name"]
        model = self.repository.get(call.model, _version(request))
        call.version = model.version
        monitor = self._monitor(model)
        if monitor is None:
            why = (
                "drift monitoring is off (--no-drift)"
                if not self.config.drift_monitoring
                else f"it has no reference profile ({model.path.parent.relative_to(self.config.model_dir)}/profile.json; prunekit export writes one)"
            )
            raise HTTPError(404, f"model {model.name!r} version {model.version} is not watched for drift: {why}")
        return monitor

    async def _drift(self, request: Request, call: _Call) -> Response:
        return _json(self._watched(request, call).report())

    async def _feedback(self, request: Request, call: _Call) -> Response:
        name = request.path_params["name"]
        version = _version(request)
        self._watched(request, call)  # 404 unless the version is watched
        body = parse_json(await _read_body(request, self.config.max_body_bytes))
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
            raise HTTPError(400, 'feedback body should be {"request_id": "<X-Request-ID of the prediction>", "labels": [...]}')
        models = (
            [self.repository.get(name, version)]
            if version is not None
            else sorted((m for m in self.repository.loaded() if m.name == name), key=lambda m: -m.version)
        )
        for model in models:  # the version that answered the request keeps its prediction
            monitor = self._monitor(model)
            if monitor is None:
                continue
            try:
                result = monitor.feedback(body["request_id"], body.get("labels"))
            except UnknownPredictionError:
                continue
            call.version = model.version
            return _json({**result, "version": model.version})
        raise UnknownPredictionError(
            f"model {name!r}: no prediction is kept for request id {body['request_id']!r} (send the X-Request-ID "
            f"header of the predict response; the last {self.config.drift.kept_predictions} predictions are kept per version)"
        )

    async def _status(self, request: Request, call: _Call) -> Response:
        call.model = request.path_params["name"]
        if call.model.endswith(":predict") or request.url.path.endswith(":predict"):
            raise HTTPError(405, f"{request.url.path} takes POST with a JSON body", {"Allow": "POST"})
        version = _version(request)
        statuses = self.repository.status(call.model)
        if version is not None:
            statuses = [s for s in statuses if s.version == version]
            if not statuses:
                raise ModelNotFoundError(f"model {call.model!r} has no version {version}")
        return _json({"model_version_status": [s.to_json() for s in statuses]})

    async def _metadata(self, request: Request, call: _Call) -> Response:
        call.model = request.path_params["name"]
        model = self.repository.get(call.model, _version(request))
        call.version = model.version
        runtime = model.runtime
        tensors = {
            "inputs": [{"name": s.name, "dtype": s.dtype.name, "shape": s.json_shape()} for s in runtime.inputs],
            "outputs": [{"name": s.name, "dtype": s.dtype.name, "shape": s.json_shape()} for s in runtime.outputs],
        }
        batcher = self._batcher(model)
        metadata = {
            "format": model.format,
            "path": str(model.path.relative_to(self.config.model_dir)),
            "signature_def": tensors,
            **model.info.to_json(),
            "batching": {"max_batch_size": batcher.max_batch_size, "batch_timeout_ms": batcher.max_wait_s * 1000},
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(model.loaded_at)),
        }
        spec = {"name": model.name, "signature_name": "serving_default", "version": str(model.version)}
        return _json({"model_spec": spec, "metadata": metadata})

    async def _predict(self, request: Request, call: _Call) -> Response:
        call.model = request.path_params["name"]
        model = self.repository.get(call.model, _version(request))
        call.version = model.version
        call.headers["X-Model-Version"] = str(model.version)
        body = await _read_body(request, self.config.max_body_bytes)
        label = f"model {model.name!r} version {model.version}"

        def decode() -> Any:
            return decode_request(parse_json(body), model.runtime.inputs, label, self.config.allow_nonfinite)

        decoded = await run_in_threadpool(decode) if len(body) > _OFFLOAD_BYTES else decode()
        call.rows = decoded.rows
        try:
            outputs = await asyncio.wait_for(self._batcher(model).submit(decoded.feeds), self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPError(
                504, f"{label}: no answer within the request timeout of {self.config.request_timeout_s:g} s (--request-timeout)"
            ) from None
        monitor = self._monitor(model)
        if monitor is not None:
            monitor.observe(decoded.feeds, outputs, call.request_id)

        def encode() -> bytes:
            return dump_json(encode_response(outputs, model.runtime.outputs, decoded.row_format))

        values = sum(int(v.size) for v in outputs.values())
        payload = await run_in_threadpool(encode) if values > _OFFLOAD_VALUES else encode()
        return Response(payload, media_type="application/json")


def create_app(config: ServeConfig) -> Starlette:
    """An ASGI app serving ``config.model_dir``; models load at startup (lifespan).

    Example::

        app = create_app(ServeConfig(model_dir=Path("models")))
        # uvicorn.run(app, host="127.0.0.1", port=8501)
    """
    return ModelServer(config).app
