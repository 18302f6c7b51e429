"""The policy as a Ray Serve application: HTTP in, `PolicyService` batches, HTTP out.

Ray Serve does the serving (HTTP proxy, replicas, request routing, `@serve.batch` queues); this module only
checks the token, bounds and decodes the body (edgedp/serve/wire.py) and hands the request to the batcher.

Routes (one deployment at route prefix "/"):
  GET  /health    -> the served policy's spec (horizon, features, K, sampler options): what a robot checks
  POST /predict   -> one chunk for one observation window (wire.py request/reply)
Every route needs `Authorization: Bearer <token>`; the token is compared with hmac.compare_digest.
"""
from __future__ import annotations

import asyncio
import hmac
from dataclasses import asdict
from typing import Optional

from edgedp.errors import UserError
from edgedp.serve.service import ServeOptions
from edgedp.serve.wire import MAX_REQUEST_BYTES, WireError, decode_request, encode_error, encode_health, encode_reply

APP_NAME = "edgedp"
MISSING = "Ray Serve is not installed: pip install 'edgedp[serve]'"


def require_ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UserError(MISSING) from None
    return ray, serve


def token_ok(header: Optional[str], token: bytes) -> bool:
    """Constant-time comparison of the bearer token (no early exit on the first differing byte)."""
    given = (header or "").encode("utf-8", "replace")
    prefix = b"Bearer "
    given = given[len(prefix):] if given.startswith(prefix) else b""
    return hmac.compare_digest(given, token)


class PolicyEndpoint:
    """The deployment's class (wrapped by `serve.deployment` in `application`, so importing this module does
    not need Ray)."""

    def __init__(self, opts: dict, token: str, max_batch_size: int, batch_wait_timeout_s: float):
        from edgedp.serve.service import PolicyService

        if not token:
            raise ValueError("a shared token is required")
        self._token = token.encode("utf-8")
        self.service = PolicyService(ServeOptions(**opts))
        self._health = encode_health(self.service.spec())
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def __call__(self, request):
        from starlette.responses import Response

        def reply(body: bytes, status: int = 200) -> Response:
            return Response(body, status_code=status, media_type="application/msgpack")

        if not token_ok(request.headers.get("authorization"), self._token):
            return reply(encode_error("token refused"), 401)
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/health"):
            return reply(self._health)
        if request.method != "POST" or not path.endswith("/predict"):
            return reply(encode_error("use POST /predict or GET /health"), 404)
        try:
            body = await _bounded_body(request)
            item = decode_request(body)
        except WireError as exc:
            return reply(encode_error(str(exc)), 400)
        answer = await self.predict(item)
        if answer.error is not None:
            return reply(encode_error(answer.error), 422)
        return reply(encode_reply(answer.actions, answer.timing, answer.batch))

    async def predict(self, items: list) -> list:
        """Batched by `@serve.batch` (applied in `application`): requests from several robots that arrive
        within batch_wait_timeout_s form one list. Runs off the event loop so new requests keep queueing."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.service.answer, items)


async def _bounded_body(request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_REQUEST_BYTES):
        raise WireError(f"request: body of {declared} bytes refused (at most {MAX_REQUEST_BYTES})")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_REQUEST_BYTES:
            raise WireError(f"request: body larger than {MAX_REQUEST_BYTES} bytes refused")
        chunks.append(part)
    return b"".join(chunks)


def application(opts: ServeOptions, token: str, replicas: int = 1, max_batch_size: int = 16,
                batch_wait_timeout_s: float = 0.005, replica_cpus: float = 1.0):
    """The bound Ray Serve application (deploy it with serve.run)."""
    _, serve = require_ray()
    cls = type("PolicyEndpoint", (PolicyEndpoint,), {
        "predict": serve.batch(max_batch_size=max(1, max_batch_size), batch_wait_timeout_s=batch_wait_timeout_s)(
            PolicyEndpoint.predict)})
    deployment = serve.deployment(
        name="policy", num_replicas=replicas, ray_actor_options={"num_cpus": replica_cpus},
        max_ongoing_requests=max(32, 2 * max_batch_size))(cls)
    return deployment.bind(asdict(opts), token, max_batch_size, batch_wait_timeout_s)


def start(opts: ServeOptions, token: str, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
          max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005, num_cpus: Optional[int] = None,
          replica_cpus: float = 1.0) -> str:
    """Start Ray (if this process has not), Serve on host:port, and the policy app; returns its base URL."""
    ray, serve = require_ray()
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": host, "port": int(port)})
    serve.run(application(opts, token, replicas, max_batch_size, batch_wait_timeout_s, replica_cpus),
              name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{int(port)}"


def stop(shutdown_ray: bool = True) -> None:
    """serve.shutdown, then ray.shutdown: the order Ray documents for a clean stop."""
    ray, serve = require_ray()
    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            if shutdown_ray:
                ray.shutdown()
