"""The ASGI application: a tiny explicit router over /push, /health, /ready and /metrics.

No framework: the per-request work is parsing one small form, so every layer between the
socket and the relay is cost without benefit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from push_relay import metrics
from push_relay.address import Listener
from push_relay.config import Config, ServerConfig
from push_relay.errors import InvalidRequest
from push_relay.health import ReadinessProbe, starting
from push_relay.ratelimit import Verdict
from push_relay.request import parse_form, validate
from push_relay.runtime import Runtime, RuntimeFactory, runtimes_sharing_tokens

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

MAX_BODY_BYTES = 4096
FORM_TYPE = b"application/x-www-form-urlencoded"
TEXT = (b"content-type", b"text/plain")
TEXT_UTF8 = (b"content-type", b"text/plain; charset=utf-8")
PUSH_NOT_SUCCESSFUL = b"Push not successful"
TOO_MANY_REQUESTS = b"Too many requests"
CLOSE = (b"connection", b"close")
METRICS_TYPE = (b"content-type", metrics.CONTENT_TYPE.encode())

log = logging.getLogger("push_relay")
_VISIBLE_ASCII = re.compile(rb"[\t\x20-\x7e]*")  # what the original accepts as a header value


class _BodyTooLarge(Exception):
    pass


class PushRelayApp:
    """The relay's HTTP front end; the `Runtime` is built at ASGI lifespan start-up."""

    def __init__(
        self,
        config: Config,
        runtime_factory: RuntimeFactory | None = None,
    ) -> None:
        self._set_config(config)
        # set by the server once the `[server] admin_listen` socket is bound (a reload keeps it)
        self.admin: Listener | None = None
        self._runtime_factory = runtime_factory or runtimes_sharing_tokens()
        self.runtime: Runtime | None = None
        self.draining = False
        self._probe: ReadinessProbe | None = None
        self._retiring: set[asyncio.Task[None]] = set()  # runtimes replaced by a reload
        # tells operators (and tests) which worker process answered /health
        self._worker = (b"x-push-relay-worker", str(os.getpid()).encode())

    def _set_config(self, config: Config) -> None:
        self.config = config
        self.server: ServerConfig = config.server
        self.cors_any = "*" in self.server.cors_origins
        self._cors_origins = {o.encode() for o in self.server.cors_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # -- lifespan ---------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.runtime = await self._runtime_factory(self.config)
                except Exception as err:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                self._probe = _probe(self.runtime)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.start_draining()
                if self.runtime is not None:
                    await self.runtime.stop()
                if self._retiring:
                    await asyncio.wait(self._retiring)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def use_config(self, config: Config) -> None:
        """Serve new pushes with `config` (a reload): a new runtime (backends, clients, sinks)
        is built, then swapped in at once; pushes in flight finish on the old one, which then
        closes its connections. A section the backends refuse raises, and nothing changes."""
        runtime = await self._runtime_factory(config)
        old = self.runtime
        if old is not None and old.config.limits == config.limits:
            runtime.keep_limiter(old)  # the counts go on: a reload frees no one
        self.runtime = runtime
        self._set_config(config)
        self._probe = _probe(runtime)
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.stop())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def start_draining(self) -> None:
        """From now on `/ready` answers 503; pushes already accepted are still relayed."""
        if not self.draining:
            log.info("draining: /ready answers 503 from now on")
        self.draining = True

    # -- routing ----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        method = scope["method"]
        if self.admin is not None and self._wrong_listener(scope, path):
            await _respond(send, 404, [])
            return
        if path == "/push":
            if method == "POST":
                await self._push(scope, receive, send)
            elif method == "OPTIONS":
                await self._preflight(scope, send)
            else:
                # a /push answer like any other: CORS lets a page read why it was refused
                allow = (b"allow", b"POST, OPTIONS")
                await _respond(send, 405, [allow, *self._cors(scope)[0]])
        elif path == "/health" and method in ("GET", "HEAD"):
            await _respond(send, 200, [TEXT, self._worker], b"ok")
        elif path == "/ready" and method in ("GET", "HEAD"):
            await self._ready(send)
        elif path == "/metrics" and method in ("GET", "HEAD"):
            await _respond(send, 200, [METRICS_TYPE], metrics.render())
        elif path in ("/health", "/ready", "/metrics"):
            await _respond(send, 405, [(b"allow", b"GET, HEAD")])
        else:
            await _respond(send, 404, [])

    def _wrong_listener(self, scope: Scope, path: str) -> bool:
        """/push only on the public listener, /metrics and /ready only on the admin one."""
        assert self.admin is not None
        on_admin = self.admin.accepted(scope["server"])
        return path != "/health" and on_admin == (path == "/push")

    # -- /push ------------------------------------------------------------------------------

    async def _push(self, scope: Scope, receive: Receive, send: Send) -> None:
        cors, foreign = self._cors(scope)
        content_type = _header(scope, b"content-type")
        if content_type is None or not _visible_ascii(content_type):
            await _respond(send, 400, [TEXT_UTF8, *cors], b"Missing content type")
            return
        if not content_type.startswith(FORM_TYPE):
            body = b"Invalid content type: " + content_type
            await _respond(send, 400, [TEXT_UTF8, *cors], body)
            return
        if foreign:
            # a browser sends a form POST without a preflight: CORS alone would only hide
            # the answer from a foreign page, not stop the push
            await _respond(send, 403, [TEXT_UTF8, *cors], b"Origin not allowed")
            return
        try:
            form = await self._read_body(receive)
        except _BodyTooLarge:
            # the rest of the body is not worth reading: answer, then close the connection
            await _respond(send, 413, [TEXT_UTF8, CLOSE, *cors], b"Request body too large")
            return
        except TimeoutError:
            await _respond(send, 408, [TEXT_UTF8, CLOSE, *cors], b"Request body timed out")
            return
        runtime = self.runtime
        if runtime is None:
            await _respond(send, 503, [TEXT_UTF8, (b"retry-after", b"1"), *cors], b"Starting up")
            return
        try:
            push = validate(parse_form(form))
        except InvalidRequest as err:
            await _respond(send, err.status, [TEXT_UTF8, *cors], err.body.encode())
            return
        limiter = runtime.limiter
        if limiter is not None:
            verdict = await limiter.check(scope, push)
            if verdict.refused is not None:
                await _refuse(send, verdict, cors)
                return
        try:
            outcome = await runtime.relay.push(push)
        except asyncio.CancelledError:
            # the shutdown grace period ran out: the client should retry, not assume a failure
            await _respond(send, 503, [TEXT, (b"retry-after", b"1"), *cors], PUSH_NOT_SUCCESSFUL)
            raise
        if outcome.status == 204:
            await _respond(send, 204, [TEXT, *cors])
        elif outcome.status == 503:
            await _respond(send, 503, [TEXT, (b"retry-after", b"1"), *cors], PUSH_NOT_SUCCESSFUL)
        else:
            await _respond(send, outcome.status, [TEXT, *cors], PUSH_NOT_SUCCESSFUL)

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body, refused beyond 4 KiB.

        A client slower than `body_timeout_secs` is answered 408 and disconnected by the
        server protocol (`protocol.SlowClientProtocol`); `receive` then says so.
        """
        message = await receive()
        body: bytes = message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            raise _BodyTooLarge
        if not message.get("more_body", False):
            if message["type"] == "http.disconnect":
                raise TimeoutError
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise TimeoutError
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    # -- CORS -------------------------------------------------------------------------------

    def _cors(self, scope: Scope) -> tuple[Headers, bool]:
        """The CORS headers of a /push answer, and whether the request's `Origin` is one the
        restricted `cors_origins` refuses (the Origin header is looked up once)."""
        if self.cors_any:
            return [(b"access-control-allow-origin", b"*")], False
        origin = _header(scope, b"origin")
        if origin is not None and origin in self._cors_origins:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")], False
        return [(b"vary", b"Origin")], origin is not None

    async def _preflight(self, scope: Scope, send: Send) -> None:
        cors, foreign = self._cors(scope)
        if foreign:
            # refused as the POST would be: no CORS grant at all, and the reason in plain text
            vary = (b"vary", b"Origin")
            await _respond(send, 403, [TEXT_UTF8, vary], b"Origin not allowed")
            return
        headers = [
            *cors,
            (b"access-control-allow-methods", b"POST"),
            (b"access-control-allow-headers", b"Content-Type"),
            (b"access-control-max-age", b"86400"),
        ]
        await _respond(send, 204, headers)

    # -- /ready -----------------------------------------------------------------------------

    async def _ready(self, send: Send) -> None:
        probe = self._probe
        limits = None
        if probe is None:
            states = starting(self.config.backend_names())
        else:
            states = await probe.states()
            limits = probe.limits_state
        ready = probe is not None and not self.draining and all(s.ok for s in states.values())
        report: dict[str, Any] = {
            "ready": ready,
            "backends": {name: {"ok": s.ok, "detail": s.detail} for name, s in states.items()},
        }
        if limits is not None:
            # a shared store that is down keeps the relay from serving only when it fails closed
            limiter = self.runtime.limiter if self.runtime is not None else None
            ready = ready and (limits.ok or (limiter is not None and limiter.fail_open))
            report["ready"] = ready
            report["limits"] = {"ok": limits.ok, "detail": limits.detail}
        body = json.dumps(report).encode()
        await _respond(send, 200 if ready else 503, [(b"content-type", b"application/json")], body)


async def _refuse(send: Send, verdict: Verdict, cors: Headers) -> None:
    """A push the rate limiter refused (429), or could not decide on with fail_open off (503)."""
    retry_after = (b"retry-after", str(verdict.retry_after).encode())
    if verdict.refused == "unavailable":
        await _respond(send, 503, [TEXT, retry_after, *cors], PUSH_NOT_SUCCESSFUL)
    else:
        await _respond(send, 429, [TEXT_UTF8, retry_after, *cors], TOO_MANY_REQUESTS)


def _probe(runtime: Runtime) -> ReadinessProbe:
    limiter = runtime.limiter
    limits = None if limiter is None else limiter.readiness
    return ReadinessProbe(runtime.relay, runtime.config.backend_names(), limits=limits)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def _visible_ascii(value: bytes) -> bool:
    return _VISIBLE_ASCII.fullmatch(value) is not None


async def _respond(send: Send, status: int, headers: Headers, body: bytes = b"") -> None:
    if status != 204:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
