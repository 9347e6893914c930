"""The HTTP side of `pigg serve` (FastAPI): a click endpoint, an OpenAI-compatible chat endpoint, health,
a page that draws the click, and errors that say what is wrong.

Every error is a JSON body in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so
OpenAI clients show it, and no request can make the server stop serving: a bad request is a 4xx, a
failure inside generation a 500 for the requests of that batch only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import secrets
import struct
import time
import uuid
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pigg.serve.batcher import MicroBatcher
from pigg.serve.engine import (
    GLOBAL,
    GREEDY,
    Answer,
    BadUserId,
    Job,
    Sampling,
    ServeEngine,
    UnknownUser,
    click_messages,
)

log = logging.getLogger("pigg.serve")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
USER_MODEL_PREFIX = "user-"  # OpenAI `model` names: "global" or "user-<id>"


@dataclass
class ServeSettings:
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_pixels: int = 4096 * 4096
    max_image_bytes: int = 16 * 2**20
    max_instruction_chars: int = 2000  # text of one message (or a click's instruction)
    max_images: int = 4  # screenshots in one chat request
    max_messages: int = 16  # messages in one chat request
    max_new_tokens: int = 32  # the default answer length, and the most a request may ask for is 8x
    api_key: str | None = None

    @property
    def max_body_bytes(self) -> int:
        # base64 is 4/3 of the bytes; room for the rest of the JSON
        return self.max_image_bytes * 4 // 3 + 64 * 1024


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def error_body(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status
    )


# -- requests -------------------------------------------------------------------------------------------
class ClickRequest(BaseModel):
    image: str = Field(description="the screenshot: base64 PNG/JPEG/WebP, or a data: URI")
    instruction: str = Field(min_length=1)
    user: str | int | None = Field(None, description="a personalized user's id; none: the global model")
    max_new_tokens: int | None = Field(None, ge=1)


MAX_CHOICES = 8  # `n` at most


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat-completions request. Sampling is honoured: greedy by default (a GUI click has one
    right answer); `temperature` > 0, or `top_p` alone (at OpenAI's default temperature 1), samples, and
    `seed` makes it repeatable. The options pigg cannot honour are refused by name, never ignored."""

    model: str = GLOBAL
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    seed: int | None = None
    # refused unless neutral: what they ask, pigg's generation does not do
    stop: str | list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def refused(self) -> str | None:
        """The first option set that pigg cannot honour."""
        neutral = {"stop": (None, "", []), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
                   "logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}),
                   "tools": (None, []), "tool_choice": (None, "none", "auto")}  # fmt: skip
        for name, values in neutral.items():
            if getattr(self, name) not in values:
                return name
        if self.response_format not in (None, {"type": "text"}):
            return "response_format"
        if self.stream_options is not None and not self.stream:
            return "stream_options"
        return None

    def sampling(self) -> Sampling:
        if self.temperature is None and self.top_p is None or self.temperature == 0:
            return GREEDY  # a seed changes nothing here: greedy answers are the same every time
        temperature = 1.0 if self.temperature is None else self.temperature
        return Sampling(temperature, 1.0 if self.top_p is None else self.top_p, self.seed)


def decode_image(data: str, settings: ServeSettings, param: str) -> Image.Image:
    """A base64 image or data: URI → RGB, within the byte and pixel limits; 4xx otherwise."""
    payload = data.strip()
    if payload.startswith("data:"):
        header, comma, payload = payload.partition(",")
        if not comma or ";base64" not in header or not header[5:].startswith("image/"):
            raise ApiError(400, f"{param}: a data URI must be data:image/<type>;base64,<data>", param=param)
    elif payload.startswith(("http://", "https://", "file:")):
        raise ApiError(400, f"{param}: give the image itself (base64 or a data: URI); the server fetches no URL", param=param)  # fmt: skip
    if len(payload) * 3 // 4 > settings.max_image_bytes:
        raise ApiError(413, f"{param}: the image is over the {settings.max_image_bytes:,}-byte limit", param=param)  # fmt: skip
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}: not valid base64", param=param) from None
    image = open_header(raw, param)
    width, height = image.size
    if width * height > settings.max_pixels:
        raise ApiError(
            400,
            f"{param}: the image is {width}x{height} = {width * height:,} pixels, over the "
            f"{settings.max_pixels:,}-pixel limit",
            param=param,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except Exception as exc:  # truncated or corrupt data behind a valid header
        raise ApiError(400, f"{param}: the image cannot be decoded ({exc})", param=param) from None
    return image.convert("RGB")


def open_header(raw: bytes, param: str) -> Image.Image:
    """The image with only its header read (nothing decoded yet), by the plugin of an accepted format.
    Not `Image.open`: it refuses sizes past PIL's own decompression-bomb limit with an exception of its
    own before the server's `--max-pixels` can be checked and answered with the size."""
    Image.init()
    for name in IMAGE_FORMATS:
        factory, accept = Image.OPEN[name]
        if accept is None or accept(raw[:16]):
            try:
                return factory(io.BytesIO(raw), None)
            except (SyntaxError, OSError, ValueError, struct.error, IndexError, TypeError):
                continue  # not this format after all, or a header too damaged to read
    try:
        kind = Image.open(io.BytesIO(raw)).format
    except Exception:  # nothing PIL can read (or a size past its own limit: not an image we take)
        kind = None
    if kind is not None and kind not in IMAGE_FORMATS:
        raise ApiError(400, f"{param}: {kind} images are not accepted; send PNG, JPEG or WebP", param=param)
    raise ApiError(400, f"{param}: not an image (PNG, JPEG or WebP expected)", param=param)


def chat_messages_of(body: ChatRequest, settings: ServeSettings) -> list[dict]:
    """OpenAI chat messages → pigg's (content as items, images decoded), within the limits on messages
    and images, counted before any image is decoded."""
    if len(body.messages) > settings.max_messages:
        raise ApiError(400, f"messages: {len(body.messages)} messages, over the {settings.max_messages} limit", param="messages")  # fmt: skip
    images = sum(
        1
        for m in body.messages
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        for part in m["content"]
        if isinstance(part, dict) and part.get("type") == "image_url"
    )
    if images > settings.max_images:
        raise ApiError(400, f"messages: {images} images, over the {settings.max_images}-image limit (--max-images)", param="messages")  # fmt: skip
    messages = []
    for i, message in enumerate(body.messages):
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant", param=f"messages[{i}].role")  # fmt: skip
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"text": content}]
        text = sum(len(p["text"]) for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
        if text > settings.max_instruction_chars:
            raise ApiError(400, f"messages[{i}]: {text} characters of text, over the {settings.max_instruction_chars} limit", param=f"messages[{i}]")  # fmt: skip
        items = []
        if isinstance(content, str):
            items.append({"type": "text", "text": content})
        elif isinstance(content, list):
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    items.append({"type": "text", "text": part["text"]})
                elif kind == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str):
                        raise ApiError(400, f"{where}.image_url.url must be a data: URI", param=where)
                    items.append({"type": "image", "image": decode_image(url, settings, where)})
                else:
                    raise ApiError(400, f"{where}: expected a text or image_url part", param=where)
        else:
            raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", param=f"messages[{i}].content")  # fmt: skip
        messages.append({"role": role, "content": items})
    if messages[-1]["role"] == "assistant":
        raise ApiError(400, "the last message must not be the assistant's: there is nothing to answer", param="messages")  # fmt: skip
    return messages


# -- answers as OpenAI objects -----------------------------------------------------------------------------
def finish_reason(answer: Answer) -> str:
    return "stop" if answer.ended else "length"


def usage(answers: list[Answer]) -> dict:
    completion = sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": answers[0].prompt_tokens, "completion_tokens": completion,
            "total_tokens": answers[0].prompt_tokens + completion}  # fmt: skip


def sse(payload) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def stream_chat(batcher, completion: dict, adapter, messages, length, sampling, group, body):
    """Server-sent `chat.completion.chunk` events: the role first, the text as it is generated, each
    choice's finish_reason, usage when asked (stream_options.include_usage), then `[DONE]`. A client
    that leaves cancels its rows: taken out of a batch not yet started, stopped in one that runs."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    jobs, futures = [], []
    for index in range(body.n):

        def on_text(delta, index=index):  # called on the generation thread
            loop.call_soon_threadsafe(events.put_nowait, (index, "text", delta))

        job = Job(adapter, messages, length, sampling=sampling, group=group, on_text=on_text)
        future = batcher.enqueue(job)
        future.add_done_callback(lambda f, index=index: events.put_nowait((index, "done", f)))
        jobs.append(job)
        futures.append(future)

    def chunk(index: int | None, delta: dict | None = None, finish: str | None = None, **extra) -> str:
        choices = [] if index is None else [{"index": index, "delta": delta or {}, "finish_reason": finish}]
        return sse({**completion, "object": "chat.completion.chunk", "choices": choices,
                    **({"usage": None} if include_usage else {}), **extra})  # fmt: skip

    try:
        for index in range(body.n):
            yield chunk(index, {"role": "assistant", "content": ""})
        streamed, answers = [""] * body.n, [None] * body.n
        while any(a is None for a in answers):
            index, kind, payload = await events.get()
            if kind == "text":
                streamed[index] += payload
                yield chunk(index, {"content": payload})
                continue
            if payload.cancelled() or payload.exception() is not None:  # after the first byte: in the stream
                exc = None if payload.cancelled() else payload.exception()
                request_id = f"req-{uuid.uuid4().hex[:16]}"
                log.error("%s streamed chat failed", request_id, exc_info=exc)
                failure = "cancelled" if exc is None else f"{type(exc).__name__}: {exc}"
                yield sse({"error": {"message": f"generation failed: {failure} (request {request_id})", "type": "server_error", "param": None, "code": 500}})  # fmt: skip
                return
            answer = answers[index] = payload.result()
            if answer.raw.startswith(streamed[index]) and answer.raw != streamed[index]:
                yield chunk(index, {"content": answer.raw[len(streamed[index]) :]})
            yield chunk(index, {}, finish_reason(answer))
        if include_usage:
            yield chunk(None, usage=usage(answers))
        yield sse("[DONE]")
    finally:  # the client left (or the stream ended): nothing of this request is generated further
        for job, future in zip(jobs, futures, strict=True):
            if not future.done():
                job.cancelled.set()
                future.cancel()


# -- the app ----------------------------------------------------------------------------------------------
class BodyLimit:
    """Pure ASGI: a request body over the limit is answered 413 in the one error shape, by its declared
    length before any of it is read, or when a body streamed without one passes the limit. The body is
    read here (at most the limit is held) and handed on whole. The rest of a body over the limit is read
    and dropped first (up to `drain` times the limit): a server that answers and closes while the client
    is still sending resets the connection, and the client never sees the answer."""

    def __init__(self, app, limit: int, drain: int = 8):
        self.app, self.limit, self.drain = app, limit, drain

    async def _drop_rest(self, receive, more: bool) -> None:
        dropped = 0
        while more and dropped <= self.drain * self.limit:
            message = await receive()
            dropped += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._drop_rest(receive, True)
            return await error_body(413, f"the request body is {int(length):,} bytes, over the {self.limit:,}-byte limit", "invalid_request_error")(scope, receive, send)  # fmt: skip
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._drop_rest(receive, more)
                return await error_body(413, f"the request body is over the {self.limit:,}-byte limit", "invalid_request_error")(scope, receive, send)  # fmt: skip
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay():
            nonlocal whole
            if whole is None:
                return await receive()  # after the body: the disconnect a streaming answer listens for
            message, whole = whole, None
            return message

        return await self.app(scope, replay, send)


def create_app(engine: ServeEngine, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings(max_new_tokens=engine.max_new_tokens)
    batcher = MicroBatcher(engine, settings.max_batch, settings.max_wait_ms)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="pigg serve", version="1", lifespan=lifespan)
    app.state.engine, app.state.batcher, app.state.settings = engine, batcher, settings

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_body(exc.status, exc.message, exc.kind, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return error_body(400, "the request body is not valid JSON", "invalid_request_error")
        first = problems[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = "; ".join(
            f"{'.'.join(str(x) for x in p.get('loc', ()) if x != 'body') or 'body'}: {p.get('msg')}"
            for p in problems
        )
        return error_body(422, message, "invalid_request_error", where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        # routing (404, 405) and FastAPI's own body parsing ("There was an error parsing the body")
        kinds = {401: "authentication_error", 404: "not_found_error"}
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if message == "There was an error parsing the body":
            message = "the request body cannot be parsed as JSON (too deeply nested, or not UTF-8 text)"
        kind = kinds.get(
            exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error"
        )
        return error_body(exc.status_code, message, kind)

    @app.exception_handler(Exception)
    async def _failed(request, exc: Exception):
        # the server's own fault: logged with its traceback under an id that the answer carries
        request_id = f"req-{uuid.uuid4().hex[:16]}"
        log.error("%s %s %s failed", request_id, request.method, request.url.path, exc_info=exc)
        response = error_body(500, f"generation failed: {type(exc).__name__}: {exc} (request {request_id})", "server_error")  # fmt: skip
        response.headers["X-Request-Id"] = request_id
        return response

    def authorized(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.encode(), settings.api_key.encode()
        ):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)", "authentication_error")  # fmt: skip

    def adapter_of(user) -> str:
        if user is None or user == GLOBAL:
            return GLOBAL
        try:
            engine.adapter_dir(str(user))
        except BadUserId as exc:
            raise ApiError(400, str(exc), param="user") from None
        except UnknownUser as exc:
            raise ApiError(404, str(exc), "not_found_error", param="user") from None
        return str(user)

    def answer_length(asked: int | None) -> int:
        limit = 8 * settings.max_new_tokens
        if asked is not None and asked > limit:
            raise ApiError(400, f"at most {limit} new tokens may be asked for", param="max_new_tokens")
        return asked or settings.max_new_tokens

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return resources.files("pigg.serve").joinpath("page.html").read_text()

    @app.get("/health", dependencies=[Depends(authorized)])
    async def health():
        stats = engine.stats
        return {
            "status": "ok",
            "model": engine.model_name,
            "users": engine.users(),
            "adapters_in_memory": list(engine.loaded),
            "max_batch": settings.max_batch,
            "requests": stats.requests,
            "batches": stats.batches,
            "batch_sizes": {str(k): v for k, v in sorted(stats.batch_sizes.items())},
            "adapter_loads": stats.adapter_loads,
            "adapter_evictions": stats.adapter_evictions,
        }

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        names = [GLOBAL] + [USER_MODEL_PREFIX + u for u in engine.users()]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "pigg"} for n in names]}

    @app.post("/v1/click", dependencies=[Depends(authorized)])
    async def click(body: ClickRequest):
        began = time.perf_counter()
        adapter = adapter_of(body.user)
        if len(body.instruction) > settings.max_instruction_chars:
            raise ApiError(400, f"instruction: {len(body.instruction)} characters, over the {settings.max_instruction_chars} limit", param="instruction")  # fmt: skip
        image = decode_image(body.image, settings, "image")
        job = Job(
            adapter, click_messages(image, body.instruction), answer_length(body.max_new_tokens), image.size
        )
        answer = await batcher.submit(job)
        point = answer.click.point if answer.click is not None else None
        return {
            "x": None if point is None else round(point[0], 1),
            "y": None if point is None else round(point[1], 1),
            "answer": answer.raw,
            "user": None if adapter == GLOBAL else adapter,
            "adapter": adapter,
            "width": image.width,
            "height": image.height,
            "latency_ms": round(1000 * (time.perf_counter() - began), 1),
        }

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat(body: ChatRequest):
        refused = body.refused()
        if refused:
            raise ApiError(400, f"{refused} is not supported by pigg serve; leave it out", param=refused)
        name = body.model
        if name.startswith(USER_MODEL_PREFIX):
            adapter = adapter_of(name[len(USER_MODEL_PREFIX) :])
        elif name in (GLOBAL, engine.model_name):
            adapter = GLOBAL
        else:
            raise ApiError(404, f"model {name!r} is not served; models: global, user-<id> (GET /v1/models)", "not_found_error", "model")  # fmt: skip
        messages = chat_messages_of(body, settings)
        length = answer_length(body.max_completion_tokens or body.max_tokens)
        sampling = body.sampling()
        group = uuid.uuid4().hex if sampling.seed is not None else None
        completion = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}
        if not body.stream:
            jobs = [Job(adapter, messages, length, sampling=sampling, group=group) for _ in range(body.n)]
            answers = await asyncio.gather(*(batcher.enqueue(job) for job in jobs))
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": a.raw},
                    "finish_reason": finish_reason(a),
                }
                for i, a in enumerate(answers)
            ]
            return {**completion, "object": "chat.completion", "choices": choices, "usage": usage(answers)}
        return StreamingResponse(
            stream_chat(batcher, completion, adapter, messages, length, sampling, group, body),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
