"""Serve rewards over HTTP so heavy judges run on their own GPU or machine (`pslider-reward-server`).

Endpoints:
    GET  /health             -> {"status": "ok"}
    GET  /rewards            -> {"rewards": [{"name", "description", "needs_source", "needs_video",
                                              "needs_audio", "higher_is_better"}, ...], "max_body_bytes": int}
    POST /score/<spec>       body: `wire.encode_batch(batch)` -> {"name": spec, "scores": [...]}
`<spec>` is a served reward's canonical spec, URL-quoted; parameter order does not matter. A reward that returns
NaN or inf answers 200 with NaN scores and a "non_finite" message, so a trainer skips the step as it would locally.
Errors answer JSON {"error": message}: 400 (malformed request or batch), 404 (unknown endpoint or reward),
408 (the client stopped sending), 411 (no Content-Length), 413 (body over the limit), 503 (too many requests in
flight or connections open; retry) or 500 (the reward failed).

Limits, so that no client can exhaust the server: a body limit checked against Content-Length before anything is
read; a read timeout on every socket read and a minimum rate for the body (a stalled or trickling client is
dropped); at most `max_concurrent` requests read and scored at once (the bodies in memory take at most
2 x max_concurrent x max_body_bytes while being joined and parsed); at most
`max_connections` connection threads, beyond which the accepting thread answers 503 itself.
There is no authentication: the server binds 127.0.0.1 unless given another host explicitly.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from .base import NonFiniteScoreError, Reward
from .limits import LOOPBACK_HOSTS, MAX_BODY_BYTES, MAX_CONCURRENT, READ_TIMEOUT
from .spec import spec_key
from .wire import decode_batch

logger = logging.getLogger(__name__)
MIN_BODY_RATE = 1 << 20  # bytes/s: a body must arrive within read_timeout + size / rate, so trickling is dropped
MAX_CONNECTIONS = 64  # the default; at least twice max_concurrent
REFUSE_SEND_SECONDS = 0.05  # the accepting thread's send of a 503 must not wait on a client that reads nothing


def reward_info(reward: Reward) -> dict:
    return {
        "name": reward.name,
        "description": reward.description,
        "needs_source": reward.needs_source,
        "needs_video": reward.needs_video,
        "needs_audio": reward.needs_audio,
        "higher_is_better": reward.higher_is_better,
    }


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # so errors for a garbled request line still carry a status line

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # StreamRequestHandler applies it to every socket read and write
        super().setup()

    def log_message(self, format: str, *args) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, oversized headers, unknown method) as JSON too."""
        self.close_connection = True
        if code == HTTPStatus.NOT_IMPLEMENTED:  # an unknown method is the client's mistake: 405, not 501
            code = HTTPStatus.METHOD_NOT_ALLOWED
        text = message or self.responses.get(code, ("error",))[0]
        self._reply(code, {"error": f"{text}; use GET /health, GET /rewards or POST /score/<reward>"})

    def _reply(self, status: int, body: dict, close: bool = False) -> None:
        data = json.dumps(body).encode()
        self.close_connection = self.close_connection or close
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 503:
            self.send_header("Retry-After", "1")
        if status == 405:
            self.send_header("Allow", "GET, POST")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _reject_unread(self, status: int, message: str) -> None:
        """Answer without reading the body, then close: its bytes would be parsed as the next request."""
        self._reply(status, {"error": message}, close=True)

    def do_GET(self) -> None:
        if self.headers.get("Content-Length", "0").strip() != "0":
            self.close_connection = True  # an unread GET body would be parsed as the next request
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        elif self.path == "/rewards":
            rewards = [reward_info(r) for r in self.server.rewards.values()]
            self._reply(200, {"rewards": rewards, "max_body_bytes": self.server.max_body_bytes})
        else:
            self._reply(404, {"error": f"no endpoint GET {self.path}; use /health, /rewards or POST /score/<reward>"})

    def _declared_length(self) -> int | None:
        """The body size from Content-Length, or None after answering 400/411/413."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._reject_unread(411, "chunked bodies are not accepted; send the body with a Content-Length header")
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._reject_unread(411, "POST needs a Content-Length header giving the body's size in bytes")
            return None
        if not raw.strip().isdigit():
            self._reject_unread(400, f"Content-Length {raw!r} is not a byte count; send the body's size in bytes")
            return None
        length, limit = int(raw), self.server.max_body_bytes
        if length > limit:
            self._reject_unread(
                413,
                f"body of {length} bytes is over this server's limit of {limit} bytes ({limit / 2**20:g} MiB); "
                "send fewer samples per request (remote: rewards split batches by themselves) "
                "or restart the server with a larger --max-body-mb",
            )
            return None
        return length

    def _read_body(self, length: int) -> bytes | None:
        """The whole body, None if the client hung up, TimeoutError (the 408 message) if it stalled or trickled."""
        timeout, chunks, received = self.server.read_timeout, [], 0
        started = time.monotonic()
        deadline = started + timeout + length / MIN_BODY_RATE
        try:
            while received < length:
                left = deadline - time.monotonic()
                if left <= 0:  # data keeps coming, but too slowly
                    raise TimeoutError
                self.connection.settimeout(min(timeout, left))
                chunk = self.rfile.read1(min(length - received, 1 << 20))
                if not chunk:
                    logger.warning("%s hung up after %d of %d body bytes", self.address_string(), received, length)
                    return None
                chunks.append(chunk)
                received += len(chunk)
        except TimeoutError:
            logger.warning("%s stalled after %d of %d body bytes; dropped", self.address_string(), received, length)
            raise TimeoutError(
                f"received {received} of {length} body bytes in {time.monotonic() - started:.1f} s: the client "
                f"stopped sending for {timeout:g} s (the server's --read-timeout) or sent slower than "
                f"{MIN_BODY_RATE >> 20} MiB/s; send the whole body at once"
            ) from None
        finally:
            self.connection.settimeout(timeout)
        return b"".join(chunks)

    def do_POST(self) -> None:
        length = self._declared_length()
        if length is None:
            return
        if not self.path.startswith("/score/"):
            self._reject_unread(404, f"no endpoint POST {self.path}; use POST /score/<reward>")
            return
        try:
            reward = self.server.find(unquote(self.path[len("/score/") :]))
        except KeyError as exc:
            self._reject_unread(404, str(exc.args[0]))
            return
        if not self.server.slots.acquire(blocking=False):
            self._reject_unread(
                503,
                f"server busy: {self.server.max_concurrent} requests already in flight (its --max-concurrent); "
                "retry in a moment, or send fewer requests at once",
            )
            return
        try:
            answer = self._score(reward, length)
        finally:
            self.server.slots.release()  # before answering, so that the client's next request finds it free
        if answer is None:
            self.close_connection = True
        else:
            self._reply(*answer)

    def _score(self, reward: Reward, length: int) -> tuple[int, dict, bool] | None:
        """(status, JSON body, close) for a scoring request, or None if the client hung up mid-body."""
        try:
            body = self._read_body(length)
        except TimeoutError as exc:
            return 408, {"error": str(exc)}, True
        if body is None:
            return None
        try:
            batch = decode_batch(body)
        except (ValueError, TypeError) as exc:
            return 400, {"error": str(exc)}, False
        try:
            with self.server.locks[reward.name]:
                scores = reward(batch)
        except NonFiniteScoreError as exc:  # not the client's fault, and a trainer skips the step: pass it on
            logger.warning("%s", exc)
            return 200, {"name": reward.name, "scores": [math.nan] * len(batch), "non_finite": str(exc)}, False
        except (ValueError, TypeError) as exc:  # the reward's own input checks (e.g. missing source)
            return 400, {"error": str(exc)}, False
        except Exception as exc:
            logger.exception("reward %s failed", reward.name)
            return 500, {"error": f"reward {reward.name!r} failed: {type(exc).__name__}: {exc}"}, False
        return 200, {"name": reward.name, "scores": scores.tolist()}, False


class RewardServer(ThreadingHTTPServer):
    """A threaded HTTP server over a fixed set of rewards with bounded bodies, reads, requests and connections.

    Each reward scores one request at a time. `start()` serves in the background; `serve_forever()` in front.
    """

    daemon_threads = True
    request_queue_size = 128  # listen backlog: bursts wait for accept() instead of SYN retries

    def __init__(
        self,
        rewards: list[Reward],
        host: str = "127.0.0.1",
        port: int = 8765,
        max_body_bytes: int = MAX_BODY_BYTES,
        read_timeout: float = READ_TIMEOUT,
        max_concurrent: int = MAX_CONCURRENT,
        max_connections: int | None = None,
    ) -> None:
        if not rewards:
            raise ValueError("RewardServer needs at least one reward")
        max_connections = max_connections or max(MAX_CONNECTIONS, 2 * max_concurrent)
        if max_body_bytes < 1 or read_timeout <= 0 or max_concurrent < 1 or max_connections < max_concurrent:
            raise ValueError(
                "RewardServer needs max_body_bytes >= 1, read_timeout > 0, max_concurrent >= 1 and "
                f"max_connections >= max_concurrent; got {max_body_bytes}, {read_timeout}, {max_concurrent}, "
                f"{max_connections}"
            )
        self.rewards = {reward.name: reward for reward in rewards}
        self.keys = {spec_key(name): name for name in self.rewards}
        self.locks = {name: threading.Lock() for name in self.rewards}
        self.max_body_bytes, self.read_timeout = max_body_bytes, read_timeout
        self.max_concurrent, self.max_connections = max_concurrent, max_connections
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.connections = threading.BoundedSemaphore(max_connections)
        if host not in LOOPBACK_HOSTS:
            logger.warning(
                "reward server exposed on %s without authentication: only do this on a trusted network", host
            )
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def find(self, requested: str) -> Reward:
        """The served reward whose spec matches `requested`, or KeyError listing the served names."""
        if requested in self.rewards:
            return self.rewards[requested]
        try:
            return self.rewards[self.keys[spec_key(requested)]]
        except (KeyError, ValueError):
            raise KeyError(f"reward {requested!r} is not served here; served: {', '.join(self.rewards)}") from None

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        """One thread per connection, up to `max_connections`; past that, a 503 from the accepting thread."""
        if not self.connections.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def _refuse(self, request: socket.socket) -> None:
        data = json.dumps(
            {"error": f"server busy: {self.max_connections} connections already open (its limit); retry in a moment"}
        ).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            request.settimeout(REFUSE_SEND_SECONDS)
            request.sendall(head + data)
        except OSError:
            pass
        finally:
            request.close()

    def handle_error(self, request: socket.socket, client_address: tuple) -> None:
        """A client that vanished mid-answer is routine (one log line); anything else keeps its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            logger.info("connection from %s dropped: %s", client_address[0], error)
        else:
            logger.exception("unexpected error serving %s", client_address[0])

    def start(self) -> threading.Thread:
        """Serve in a background daemon thread (tests, notebooks); stop with `shutdown()` and `server_close()`."""
        thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="reward-server", daemon=True
        )
        thread.start()
        return thread
