"""The HTTP side: an OpenAI-compatible chat-completions API and the chat page, as a FastAPI app.

Routes: ``POST /v1/chat/completions`` (JSON, or server-sent events with ``"stream": true``), ``GET /v1/models``,
``GET /health`` and ``GET /`` (the page in ``static/``, served by this app, so it works offline). Requests
queue for the one model: generation runs in a single worker thread, one request at a time, and each request
has a cancel flag that a disconnected client sets, which stops its generation before the next token. Every
error is OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``; no traceback leaves the
server. FastAPI is imported here, not by the package, so the library works without the ``serve`` extra.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from llm_companion.serving.engine import Engine, Outcome, RequestError, Sampling

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("llm_companion.serving")
_POLL_S = 0.1   # how often a waiting request checks whether its client is still there


class APIError(Exception):
    """An error response: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def parse_request(body: bytes, engine: Engine) -> tuple[list[int], Sampling, bool, bool]:
    """Check a chat-completions body: ``(prompt ids, sampling, stream, include_usage)`` or an :class:`APIError`."""
    req = _json_object(body)
    _check_model(req.get("model"), engine)
    messages = _messages(req.get("messages"))
    sampling = _sampling(req)
    stream = req.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream")
    options = req.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object such as {\"include_usage\": true}",
                       param="stream_options")
    try:
        ids = engine.encode(messages)
    except RequestError as e:
        raise APIError(400, str(e), param=e.param, code=e.code) from None
    return ids, sampling, stream, bool(options.get("include_usage", False))


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); "
                            f"send a JSON object with 'model' and 'messages'") from None
    if not isinstance(req, dict):
        raise APIError(400, "the request body must be a JSON object with 'model' and 'messages'")
    return req


def _check_model(model: Any, engine: Engine) -> None:
    if model is not None and model not in (engine.name, "default"):
        raise APIError(404, f"the model {model!r} does not exist; this server serves {engine.name!r} "
                            f"(see GET /v1/models)", param="model", code="model_not_found")


def _messages(messages: Any) -> list[dict[str, Any]]:
    """The conversation as ``{"role", "content"}`` dicts with text content (roles are checked by the engine)."""
    if messages is None:
        raise APIError(400, "'messages' is missing; send a list such as "
                            "[{\"role\": \"user\", \"content\": \"Hello\"}]", param="messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects",
                       param="messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object with 'role' and 'content'", param=f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(400, f"messages[{i}].content parts must be {{\"type\": \"text\", \"text\": ...}}; "
                                    f"this model reads text only", param=f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        clean.append({"role": m.get("role"), "content": content})
    return clean


def _number(req: dict[str, Any], key: str, default, kind=(int, float)):
    value = req.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, kind):
        raise APIError(400, f"'{key}' must be a number", param=key)
    return value


def _sampling(req: dict[str, Any]) -> Sampling:
    """``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``n`` and ``stop``, each checked."""
    max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    max_tokens = 256 if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise APIError(400, f"'max_tokens' must be a positive integer, got {max_tokens!r}", param="max_tokens")
    temperature = _number(req, "temperature", 1.0)
    if temperature < 0:
        raise APIError(400, f"'temperature' must be >= 0 (0 = greedy), got {temperature}", param="temperature")
    top_p = _number(req, "top_p", None)
    if top_p is not None and not 0 < top_p <= 1:
        raise APIError(400, f"'top_p' must be in (0, 1], got {top_p}", param="top_p")
    seed = _number(req, "seed", None, int)
    if seed is not None and not -2**63 <= seed < 2**64:
        raise APIError(400, f"'seed' must fit in 64 bits, got {seed}", param="seed")
    n = _number(req, "n", 1, int)
    if n != 1:
        raise APIError(400, f"'n' must be 1 (this server makes one reply per request), got {n}", param="n")
    stop = req.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise APIError(400, "'stop' must be a non-empty string or a list of up to 4 of them", param="stop")
    return Sampling(max_tokens=max_tokens, temperature=float(temperature),
                    top_p=None if top_p is None else float(top_p), seed=seed, stop=tuple(stop))


class Worker:
    """The queue in front of the model: one thread runs one generation at a time, in arrival order."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-companion-serve")
        self._count_lock = threading.Lock()
        self.waiting = 0      # requests queued behind the one generating
        self.served = 0       # generations that ran to their end
        self.cancelled = 0    # generations stopped because the client went away

    async def events(self, ids: list[int], sampling: Sampling, request) -> Any:
        """Yield ``("text", piece)`` events then ``("end", Outcome)`` (or ``("error", message)``).

        The generation is cancelled when the client disconnects or this generator is closed.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel, outcome = threading.Event(), Outcome()

        def run() -> None:
            put = lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev)  # noqa: E731
            with self._count_lock:
                self.waiting -= 1
            try:
                for piece in self.engine.stream(ids, sampling, outcome, cancel):
                    put(("text", piece))
                if outcome.cancelled:
                    self.cancelled += 1
                else:
                    self.served += 1
                put(("end", outcome))
            except Exception as e:  # never a traceback to the client; the log keeps it
                log.exception("generation failed")
                put(("error", f"generation failed: {type(e).__name__}: {e}"))

        with self._count_lock:
            self.waiting += 1
        self._pool.submit(run)
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(queue.get(), timeout=_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                yield ev
                if ev[0] != "text":
                    return
                if await request.is_disconnected():
                    return
        finally:
            cancel.set()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def create_app(engine: Engine, *, api_key: str | None = None):
    """The FastAPI app serving ``engine`` (``api_key``: require ``Authorization: Bearer KEY`` on ``/v1``)."""
    worker = Worker(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.shutdown()

    app = FastAPI(title="llm-companion serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.worker = engine, worker
    _error_handlers(app)
    _model_routes(app, engine, worker, api_key)
    _chat_route(app, engine, worker, api_key)
    _page_routes(app)
    return app


def _error_handlers(app) -> None:
    """Every error as OpenAI's JSON; an unexpected one is logged and answered with a 500, never a traceback."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = (f"no route {request.method} {request.url.path}; the API is POST /v1/chat/completions, "
                   f"GET /v1/models, GET /health" if e.status_code in (404, 405) else str(e.detail))
        return JSONResponse(APIError(e.status_code, message, code=code).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return JSONResponse(APIError(400, f"invalid request: {e.errors()[:1]}").body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        log.exception("internal error")
        return JSONResponse(APIError(500, f"internal server error ({type(e).__name__}); the server keeps running",
                                     type="server_error").body(), status_code=500)


def check_key(request: Request, api_key: str | None) -> None:
    """Raise a 401 unless ``api_key`` is None or the request carries ``Authorization: Bearer <api_key>``."""
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "missing or wrong API key; send the header 'Authorization: Bearer KEY' with the "
                            "key the server was started with (--api-key)", code="invalid_api_key")


def _model_routes(app, engine: Engine, worker: Worker, api_key: str | None) -> None:
    created = int(time.time())

    def model_card() -> dict[str, Any]:
        return {"id": engine.name, "object": "model", "created": created, "owned_by": "llm-companion",
                "context_length": engine.context_length, "description": engine.description}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.name, "waiting": worker.waiting, "served": worker.served,
                "cancelled": worker.cancelled}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request, api_key)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        check_key(request, api_key)
        if name != engine.name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {engine.name!r}",
                           param="model", code="model_not_found")
        return model_card()


def _chat_route(app, engine: Engine, worker: Worker, api_key: str | None) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request, api_key)
        ids, sampling, stream, include_usage = parse_request(await request.body(), engine)
        head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": engine.name,
                "system_fingerprint": None}
        events = worker.events(ids, sampling, request)
        if not stream:
            return await _completion(events, head)
        return StreamingResponse(_chunks(events, head, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(o: Outcome) -> dict[str, int]:
    return {"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
            "total_tokens": o.prompt_tokens + o.completion_tokens}


async def _completion(events, head: dict[str, Any]):
    """The whole reply as one ``chat.completion`` object."""
    pieces, outcome = [], None
    async for kind, value in events:
        if kind == "text":
            pieces.append(value)
        elif kind == "end":
            outcome = value
        else:
            raise APIError(500, value, type="server_error")
    if outcome is None:  # the client went away
        return JSONResponse(APIError(499, "client closed the request").body(), status_code=499)
    return {**head, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                         "logprobs": None, "finish_reason": outcome.finish_reason}],
            "usage": _usage(outcome)}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _chunks(events, head: dict[str, Any], include_usage: bool):
    """The reply as server-sent ``chat.completion.chunk`` events, then the usage (if asked) and ``[DONE]``."""
    def chunk(delta: dict, finish: str | None = None) -> str:
        c = {**head, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        return _sse(c)

    yield chunk({"role": "assistant", "content": ""})
    async for kind, value in events:
        if kind == "text":
            yield chunk({"content": value})
        elif kind == "end":
            yield chunk({}, value.finish_reason or "stop")
            if include_usage:
                yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(value)})
            yield "data: [DONE]\n\n"
        else:
            yield _sse(APIError(500, value, type="server_error").body())
            yield "data: [DONE]\n\n"


def _page_routes(app) -> None:
    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    async def static(name: str):
        path = STATIC / name
        if name not in {p.name for p in STATIC.iterdir()} or not path.is_file():
            raise APIError(404, f"no file {name!r} in the page's assets", code="not_found")
        return FileResponse(path)
