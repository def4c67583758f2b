"""The live-caption websocket server: ``ws://HOST:PORT/ws`` speaks ``asr.live.protocol``; every
other path serves the static page in ``web/``.

One client's bad input gets an ``error`` (or a clean close) for that client only; the server keeps
serving. On ``stop``, on the idle timeout, at the session-length limit and on shutdown, finals of
all audio received are sent before ``done``.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import mimetypes
import secrets
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from asr.live.protocol import (
    CLOSE_BUSY,
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    AudioInput,
    ProtocolError,
    StreamFormat,
    error_message,
    parse_message,
    parse_start,
)
from asr.live.session import LiveModel
from asr.live.stream import StreamConfig, StreamSession, dumps
from asr.live.worker import ModelWorker
from asr.speech.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
WS_PATH = "/ws"


@dataclass(frozen=True)
class ServerConfig:
    """host: loopback unless told; token: required from clients when set (``Authorization: Bearer
    T`` header or ``?token=T``); max_sessions: concurrent streams (the next is closed with 1013);
    max_frame_bytes: largest message (larger: closed with 1009); idle_timeout_s: a connection
    silent this long is finished; stream: per-stream limits and pacing."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_sessions: int = 4
    max_frame_bytes: int = 1 << 20
    idle_timeout_s: float = 30.0
    stream: StreamConfig = field(default_factory=StreamConfig)
    web_dir: Path = WEB_DIR


class _Client:
    """One websocket connection: its stream (after ``start``) and how it ends."""

    def __init__(self, ws: ServerConnection, number: int) -> None:
        self.ws, self.number = ws, number
        self.audio: AudioInput | None = None
        self.stream: StreamSession | None = None
        self.ended = False

    async def send(self, message: dict) -> None:
        await self.ws.send(dumps(message))


class LiveServer:
    """``await start()``, then ``await shutdown()`` (or ``wait_stopped``, which ends on SIGINT/SIGTERM)."""

    def __init__(self, model: LiveModel, config: ServerConfig = ServerConfig()) -> None:
        self.model, self.config = model, config
        self.worker = ModelWorker(max_batch=config.max_sessions, idle=model.settle_context,
                                  threads=model.workers)
        # every stream is one sequence of this engine: one KV pool, allocated once
        self.engine = model.open_engine(config.max_sessions, config.stream.max_seconds)
        self.clients: set[_Client] = set()
        self._numbers = itertools.count(1)
        self._server = None
        self.port = config.port

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._http,
            max_size=self.config.max_frame_bytes,
            max_queue=16,
            # backpressure stops reading a stream's frames, and with them its pongs: a late pong must
            # not close a stream that is only waiting for the model
            ping_timeout=None,
            server_header="asr-live",
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("live captions on ws://%s:%d%s", self.config.host, self.port, WS_PATH)

    async def shutdown(self) -> None:
        """Stop accepting, send every stream's remaining finals and ``done``, close with 1001."""
        self._server.close(close_connections=False)
        await asyncio.gather(
            *(self._end(client, CLOSE_GOING_AWAY, "server shutting down") for client in list(self.clients)),
            return_exceptions=True,
        )
        await self._server.wait_closed()
        self.worker.stop()

    async def wait_stopped(self) -> None:
        """Serve until SIGINT or SIGTERM, then shut down gracefully (after ``start``)."""
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: flushing %d stream(s)", len(self.clients))
        await self.shutdown()

    # ------------------------------------------------------------------ HTTP
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == WS_PATH:
            if self.config.token is not None and not self._authorized(request, url.query):
                return connection.respond(
                    HTTPStatus.UNAUTHORIZED,
                    "missing or wrong token: send the header "
                    "'Authorization: Bearer TOKEN' or connect to /ws?token=TOKEN\n",
                )
            return None
        return self._static(connection, url.path)

    def _authorized(self, request: Request, query: str) -> bool:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else (parse_qs(query).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.config.token.encode())

    def _static(self, connection: ServerConnection, path: str) -> Response:
        root = self.config.web_dir.resolve()
        target = (root / (path.lstrip("/") or "index.html")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found: {path}\n")
        body = target.read_bytes()
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        headers = Headers(
            [
                (
                    "Content-Type",
                    f"{kind}; charset=utf-8"
                    if kind.startswith("text/") or kind.endswith("javascript")
                    else kind,
                ),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ]
        )
        return Response(HTTPStatus.OK, "OK", headers, body)

    # ------------------------------------------------------------------ websocket
    async def _handle(self, ws: ServerConnection) -> None:
        if urlsplit(ws.request.path).path != WS_PATH:
            await ws.close(CLOSE_POLICY, f"the websocket endpoint is {WS_PATH}")
            return
        if len(self.clients) >= self.config.max_sessions:
            await ws.close(
                CLOSE_BUSY, f"server busy: {self.config.max_sessions} sessions already; try again later"
            )
            return
        client = _Client(ws, next(self._numbers))
        self.clients.add(client)
        try:
            await self._converse(client)
        except ConnectionClosed:
            pass
        except Exception:  # a bug must not take the server down: log it, end this client only
            log.exception("client %d: unexpected failure", client.number)
            try:
                await ws.close(1011, "internal error")
            except Exception:
                pass
        finally:
            self.clients.discard(client)
            if client.stream is not None and not client.ended:
                client.ended = True
                await client.stream.abort()

    async def _converse(self, client: _Client) -> None:
        ws, config = client.ws, self.config
        while not client.ended:
            try:
                message = await asyncio.wait_for(ws.recv(), timeout=config.idle_timeout_s)
            except TimeoutError:
                await ws.send(
                    error_message("idle_timeout", f"nothing received for {config.idle_timeout_s:g} s")
                )
                await self._end(client, CLOSE_NORMAL, "idle timeout")
                return
            try:
                if isinstance(message, str):
                    await self._text(client, parse_message(message))
                else:
                    await self._audio(client, message)
            except ProtocolError as error:
                await ws.send(error_message(error.code, str(error)))

    async def _text(self, client: _Client, message: dict) -> None:
        kind = message["type"]
        if kind == "start":
            if client.stream is not None:
                raise ProtocolError("already_started", "this session is already started; send stop first")
            stream_format: StreamFormat = parse_start(message)
            client.audio = AudioInput(stream_format)
            session_id = f"{client.number}-{secrets.token_hex(4)}"
            stream = StreamSession(
                session_id, self.model, self.engine, self.worker, self.config.stream, client.send,
                stream_format.prompt,
            )
            client.stream = stream
            await stream.open()
            await client.send({"type": "ready", "session": session_id})
        elif kind == "stop":
            if client.stream is None:
                raise ProtocolError("not_started", "stop before start: send start first")
            await self._end(client, CLOSE_NORMAL, "done")
        else:
            raise ProtocolError("bad_message", f'unknown message type {kind!r}: use "start" or "stop"')

    async def _audio(self, client: _Client, frame: bytes) -> None:
        stream = client.stream
        if stream is None:
            raise ProtocolError("not_started", "audio before start: send a start message first")
        if not frame:
            return
        samples = client.audio.decode(frame)
        limit = self.config.stream.max_seconds
        room = int((limit - stream.received_seconds) * SAMPLE_RATE)
        stream.feed(samples[: max(room, 0)])
        if room <= len(samples):
            await client.send(
                {
                    "type": "error",
                    "code": "session_too_long",
                    "message": f"the session reached its {limit:g} s limit; start a new one",
                }
            )
            await self._end(client, CLOSE_NORMAL, "session length limit")
            return
        await stream.wait_for_room()

    async def _end(self, client: _Client, code: int, reason: str) -> None:
        """Finish the client's stream (finals, then ``done``) and close; once per client."""
        if client.ended:
            return
        client.ended = True
        try:
            if client.stream is not None:
                client.stream.feed(client.audio.flush())
                await client.stream.finish()
                await client.send({"type": "done", **client.stream.stats()})
            await client.ws.close(code, reason)
        except ConnectionClosed:
            if client.stream is not None:
                await client.stream.abort()
