"""Serve rewards over HTTP so heavy judges run on their own GPU or machine (`pslider-reward-server`).

Endpoints:
    GET  /health             -> {"status": "ok"}
    GET  /rewards            -> {"rewards": [{"name", "description", "needs_source", "needs_video",
                                              "needs_audio", "higher_is_better"}, ...]}
    POST /score/<spec>       body: `wire.encode_batch(batch)` -> {"name": spec, "scores": [...]}
`<spec>` is a served reward's canonical spec, URL-quoted; parameter order does not matter. Errors answer
JSON {"error": message} with 400 (bad batch), 404 (unknown reward), 413 (too large) or 500 (reward failed).
There is no authentication: the server binds 127.0.0.1 unless given another host explicitly.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from .base import Reward
from .spec import spec_key
from .wire import decode_batch

logger = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
MAX_BODY_BYTES = 4 << 30


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

    def log_message(self, format: str, *args) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(200, {"status": "ok"})
        elif self.path == "/rewards":
            self._reply(200, {"rewards": [reward_info(r) for r in self.server.rewards.values()]})
        else:
            self._reply(404, {"error": f"no endpoint GET {self.path}; use /health, /rewards or POST /score/<reward>"})

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._reply(400, {"error": "send the body with a valid Content-Length header"})
            return
        if length > self.server.max_body_bytes:
            self.close_connection = True
            self._reply(
                413, {"error": f"body of {length} bytes exceeds {self.server.max_body_bytes}; send fewer samples"}
            )
            return
        body = self.rfile.read(length)
        if not self.path.startswith("/score/"):
            self._reply(404, {"error": f"no endpoint POST {self.path}; use POST /score/<reward>"})
            return
        requested = unquote(self.path[len("/score/") :])
        try:
            reward = self.server.find(requested)
        except KeyError as exc:
            self._reply(404, {"error": str(exc.args[0])})
            return
        try:
            batch = decode_batch(body)
        except (ValueError, TypeError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        try:
            with self.server.locks[reward.name]:
                scores = reward(batch)
        except (ValueError, TypeError) as exc:  # the reward's own input checks (e.g. missing source)
            self._reply(400, {"error": str(exc)})
            return
        except Exception as exc:
            logger.exception("reward %s failed", reward.name)
            self._reply(500, {"error": f"reward {reward.name!r} failed: {type(exc).__name__}: {exc}"})
            return
        self._reply(200, {"name": reward.name, "scores": scores.tolist()})


class RewardServer(ThreadingHTTPServer):
    """A threaded HTTP server over a fixed set of rewards; each reward scores one request at a time."""

    daemon_threads = True

    def __init__(
        self, rewards: list[Reward], host: str = "127.0.0.1", port: int = 8765, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        if not rewards:
            raise ValueError("RewardServer needs at least one reward")
        self.rewards = {reward.name: reward for reward in rewards}
        self.keys = {spec_key(name): name for name in self.rewards}
        self.locks = {name: threading.Lock() for name in self.rewards}
        self.max_body_bytes = max_body_bytes
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

    def start(self) -> threading.Thread:
        """Serve in a background daemon thread (tests, notebooks); stop with `shutdown()` and `server_close()`."""
        thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="reward-server", daemon=True
        )
        thread.start()
        return thread
