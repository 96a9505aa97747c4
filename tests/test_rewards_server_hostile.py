"""The reward server under hostile input and load, and the `remote:` client against broken servers.

Everything runs over real sockets on 127.0.0.1: the real RewardServer, and small real HTTP servers that
misbehave on purpose. Timeouts are fractions of a second so that the file runs in seconds.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import torch
from safetensors.torch import save

from pslider_core.rewards import NonFiniteScoreError, Reward, RewardBatch, get_reward
from pslider_core.rewards.remote import RemoteReward
from pslider_core.rewards.server import RewardServer
from pslider_core.rewards.wire import encode_batch

torch.set_num_threads(1)
READ_TIMEOUT = 0.5
BODY_LIMIT = 64 << 10


class Sleepy(Reward):
    """Takes `seconds` per request."""

    name = "sleepy"
    description = "slow on purpose"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def score(self, batch):
        time.sleep(self.seconds)
        return torch.zeros(len(batch))


class NaNReward(Reward):
    name = "nan_reward"
    description = "returns NaN"

    def score(self, batch):
        return torch.full((len(batch),), float("nan"))


def make_batch(n: int = 2, size: int = 8, seed: int = 0) -> RewardBatch:
    gen = torch.Generator().manual_seed(seed)
    return RewardBatch(images=torch.rand(n, 3, size, size, generator=gen), prompts=[f"p{i}" for i in range(n)])


def tensors_body(images: torch.Tensor, prompts: list[str], sources: torch.Tensor | None = None) -> bytes:
    """A body that skips RewardBatch's client-side checks, as a foreign client would send it."""
    tensors = {"images": images.contiguous()} | ({} if sources is None else {"sources": sources.contiguous()})
    return save(tensors, metadata={"prompts": json.dumps(prompts)})


def header_body(header: dict, payload: bytes) -> bytes:
    """A safetensors body written by hand, to say what safetensors itself never would."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def served():
    rewards = [get_reward("brightness"), get_reward("ssim"), NaNReward()]
    server = RewardServer(rewards, port=0, max_body_bytes=BODY_LIMIT, read_timeout=READ_TIMEOUT, max_concurrent=2)
    server.start()
    yield server
    stop(server)


def connect(server: ThreadingHTTPServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=5)


def answer(sock: socket.socket) -> tuple[int, dict]:
    """One HTTP response read from a raw socket: (status, JSON body)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def raw_request(server: ThreadingHTTPServer, data: bytes) -> tuple[int, dict]:
    with connect(server) as sock:
        sock.sendall(data)
        return answer(sock)


def post_head(path: str, length: int) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


def assert_serves(server: RewardServer) -> None:
    """A valid request after a bad one gets its exact scores."""
    batch = make_batch(seed=7)
    reply = requests.post(f"{server.url}/score/brightness", data=encode_batch(batch), timeout=5)
    assert reply.status_code == 200, reply.text
    torch.testing.assert_close(torch.tensor(reply.json()["scores"]), get_reward("brightness")(batch))


F32_IMAGE = {"dtype": "F32", "shape": [1, 3, 8, 8], "data_offsets": [0, 768]}
ONE_PROMPT = {"prompts": '["a"]'}
BAD_BODIES = {  # case: (body, reward, what the error must say)
    "not safetensors": (b"garbage", "brightness", "too short for a safetensors blob"),
    "malformed JSON header": (struct.pack("<Q", 9) + b"{not json" + bytes(768), "brightness", "not valid JSON"),
    "header past the body": (struct.pack("<Q", 1 << 40) + b"{}", "brightness", "truncated or not a safetensors"),
    "prompts not a list": (
        header_body({"images": F32_IMAGE, "__metadata__": {"prompts": '{"a": 1}'}}, bytes(768)),
        "brightness",
        "not a JSON list of strings",
    ),
    "prompts not strings": (
        header_body({"images": F32_IMAGE, "__metadata__": {"prompts": "[1]"}}, bytes(768)),
        "brightness",
        "not a JSON list of strings",
    ),
    "no prompts": (header_body({"images": F32_IMAGE}, bytes(768)), "brightness", "no 'prompts' metadata"),
    "uint8 images": (
        tensors_body(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), ["a"]),
        "brightness",
        r"float32.*got 'U8'.*images.float\(\) / 255",
    ),
    "float64 images": (tensors_body(torch.rand(1, 3, 8, 8, dtype=torch.float64), ["a"]), "brightness", "'F64'"),
    "shape larger than the data": (
        header_body(
            {"images": {**F32_IMAGE, "shape": [100000, 3, 1024, 1024]}, "__metadata__": ONE_PROMPT}, bytes(768)
        ),
        "brightness",
        "not a valid safetensors blob",
    ),
    "unknown tensor": (
        header_body({"images": F32_IMAGE, "imgs": F32_IMAGE, "__metadata__": ONE_PROMPT}, bytes(768)),
        "brightness",
        r"unexpected tensors \['imgs'\]",
    ),
    "grey images": (tensors_body(torch.rand(2, 1, 8, 8), ["a", "b"]), "brightness", "3 RGB channels"),
    "no batch dim": (tensors_body(torch.rand(3, 8, 8), ["a"]), "brightness", r"\(N,3,H,W\).*got shape \(3, 8, 8\)"),
    "one prompt for two images": (tensors_body(torch.rand(2, 3, 8, 8), ["a"]), "brightness", "one prompt per"),
    "[0, 255] range": (tensors_body(torch.rand(1, 3, 8, 8) * 255, ["a"]), "brightness", r"pass x / 255"),
    "NaN pixels": (tensors_body(torch.full((1, 3, 8, 8), float("nan")), ["a"]), "brightness", "NaN"),
    "a 1x64 strip": (tensors_body(torch.rand(1, 3, 1, 64), ["a"]), "brightness", "aspect ratio over 16:1"),
    "missing source": (encode_batch(make_batch()), "ssim", "sources="),
    "one source for two images": (
        tensors_body(torch.rand(2, 3, 8, 8), ["a", "b"], torch.rand(1, 3, 8, 8)),
        "ssim",
        "one source per sample",
    ),
    "sources over many frames": (
        tensors_body(torch.rand(1, 40, 3, 2, 2), ["a"], torch.rand(1, 3, 32, 32)),
        "ssim",
        "repeated over 40 frames",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_bodies_get_400_saying_what_to_fix(served, case):
    body, reward, message = BAD_BODIES[case]
    reply = requests.post(f"{served.url}/score/{reward}", data=body, timeout=5)
    assert reply.status_code == 400, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    assert re.search(message, reply.json()["error"]), reply.json()
    assert_serves(served)


BAD_REQUESTS = {  # case: (raw request, status, what the error must say)
    "unknown reward": (post_head("/score/pickscore", 4) + b"abcd", 404, "not served here; served: brightness"),
    "unknown endpoint": (post_head("/other", 4) + b"abcd", 404, "use POST /score/<reward>"),
    "unknown GET": (b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404, "use /health, /rewards"),
    "no Content-Length": (b"POST /score/brightness HTTP/1.1\r\nHost: x\r\n\r\nabcd", 411, "Content-Length header"),
    "chunked body": (
        b"POST /score/brightness HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        411,
        "chunked bodies are not accepted",
    ),
    "negative Content-Length": (post_head("/score/brightness", -5), 400, "not a byte count"),
    "text Content-Length": (b"POST /score/brightness HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400, "not a byte count"),
    "garbled request line": (b"HELLO\r\n\r\n", 400, "Bad request syntax.*POST /score/<reward>"),
    "unknown method": (b"PUT /score/brightness HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "Unsupported method"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_json_errors(served, case):
    data, status, message = BAD_REQUESTS[case]
    got, body = raw_request(served, data)
    assert got == status and re.search(message, body["error"]), body
    assert_serves(served)


def test_oversized_body_gets_413_before_it_is_read(served):
    with connect(served) as sock:
        started = time.monotonic()
        sock.sendall(post_head("/score/brightness", 1 << 30) + bytes(1024))  # announces 1 GiB, sends 1 KiB
        status, body = answer(sock)
        elapsed = time.monotonic() - started
    assert status == 413 and f"limit of {BODY_LIMIT} bytes" in body["error"] and "--max-body-mb" in body["error"]
    assert elapsed < READ_TIMEOUT / 2  # answered at once, not after waiting for the body
    too_big = requests.post(f"{served.url}/score/brightness", data=bytes(4 * BODY_LIMIT), timeout=5)
    assert too_big.status_code == 413  # a client still sending reads the answer, not a reset
    assert_serves(served)


def test_stalled_clients_are_dropped_without_blocking_others(served):
    body = encode_batch(make_batch())
    mid_body, mid_headers = connect(served), connect(served)
    started = time.monotonic()
    mid_body.sendall(post_head("/score/brightness", len(body)) + body[: len(body) // 2])
    mid_headers.sendall(b"POST /score/brightness HTTP/1.1\r\nContent-Len")
    for _ in range(3):  # the stalled body holds one of the 2 slots; the other serves everyone else
        assert_serves(served)
    assert time.monotonic() - started < READ_TIMEOUT
    status, error = answer(mid_body)
    dropped_after = time.monotonic() - started
    assert status == 408 and "stopped sending for 0.5 s (the server's --read-timeout)" in error["error"]
    assert READ_TIMEOUT <= dropped_after < READ_TIMEOUT + 0.4
    assert mid_body.recv(1) == b""  # and closed
    mid_headers.settimeout(2)
    assert mid_headers.recv(1) == b""  # stalled in its headers: closed without an answer
    mid_body.close()
    mid_headers.close()
    with ThreadPoolExecutor(2) as pool:  # both slots are free again
        assert all(pool.map(lambda _: assert_serves(served) is None, range(2)))


def test_trickling_client_is_dropped_at_the_minimum_rate(served):
    body = encode_batch(make_batch())  # about 1.7 KB: due within 0.5 s + 1.7 KB / (1 MiB/s)
    sock = connect(served)
    sock.sendall(post_head("/score/brightness", len(body)))
    stop_sending = threading.Event()

    def trickle():
        for byte in body:  # one byte every 0.1 s: never idle for the read timeout, yet far too slow
            if stop_sending.wait(0.1):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return

    sender = threading.Thread(target=trickle, daemon=True)
    started = time.monotonic()
    sender.start()
    assert_serves(served)
    status, error = answer(sock)
    dropped_after = time.monotonic() - started
    stop_sending.set()
    sender.join()
    sock.close()
    assert status == 408 and "slower than 1 MiB/s" in error["error"], error
    assert READ_TIMEOUT <= dropped_after < READ_TIMEOUT + 0.4
    assert_serves(served)


def test_get_with_a_body_closes_the_connection(served):
    with connect(served) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nContent-Length: 5\r\n\r\nHELLO")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200 and response.getheader("Connection") == "close"
        response.read()
        assert sock.recv(1) == b""  # HELLO was not taken for a next request


def test_load_beyond_the_bound_gets_503_and_everyone_an_answer():
    sleepy = Sleepy(0.2)
    server = RewardServer([sleepy], port=0, read_timeout=READ_TIMEOUT, max_concurrent=2)
    server.start()
    body = encode_batch(make_batch())
    try:

        def post(_):
            return requests.post(f"{server.url}/score/sleepy", data=body, timeout=5)

        started = time.monotonic()
        with ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(post, range(12)))
        elapsed = time.monotonic() - started
        statuses = sorted(r.status_code for r in replies)
        assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses
        busy = next(r for r in replies if r.status_code == 503)
        assert "2 requests already in flight (its --max-concurrent)" in busy.json()["error"]
        assert busy.headers["Retry-After"] == "1"
        assert elapsed < 2  # the 503s come at once; only admitted requests wait for the reward
        # clients that retry (remote: rewards do) all get through
        remote = RemoteReward(server.url, "sleepy", timeout=5, retries=4)
        with ThreadPoolExecutor(4) as pool:
            scores = list(pool.map(lambda _: remote(make_batch()), range(4)))
        assert all(torch.equal(s, torch.zeros(2)) for s in scores)
    finally:
        stop(server)


def test_a_slot_is_free_again_when_the_client_has_its_answer():
    server = RewardServer([get_reward("brightness")], port=0, max_concurrent=1)
    server.start()
    body = encode_batch(make_batch())
    try:  # a new connection each time, so another thread takes each request: none may find the slot still held
        statuses = [
            requests.post(f"{server.url}/score/brightness", data=body, timeout=5).status_code for _ in range(40)
        ]
        assert statuses == [200] * 40
    finally:
        stop(server)


def test_client_hanging_up_mid_body_frees_its_slot(served):
    body = encode_batch(make_batch())
    for _ in range(3):  # more than the 2 slots
        with connect(served) as sock:
            sock.sendall(post_head("/score/brightness", len(body)) + body[:100])
    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(lambda _: assert_serves(served) is None, range(2)))


def test_connections_beyond_the_bound_get_503_from_the_acceptor():
    server = RewardServer(
        [get_reward("brightness")], port=0, read_timeout=READ_TIMEOUT, max_concurrent=1, max_connections=2
    )
    server.start()
    try:
        idle = [connect(server), connect(server)]  # each holds a connection thread, sends nothing
        time.sleep(0.05)
        status, body = raw_request(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and "2 connections already open" in body["error"]
        for sock in idle:
            sock.close()
        time.sleep(0.1)
        assert_serves(server)
    finally:
        stop(server)


def test_nan_from_a_served_reward_reaches_the_client_as_non_finite(served):
    reply = requests.post(f"{served.url}/score/nan_reward", data=encode_batch(make_batch()), timeout=5)
    assert reply.status_code == 200 and "non-finite" in reply.json()["non_finite"]
    remote = get_reward(f"remote:{served.url}#nan_reward")
    with pytest.raises(
        NonFiniteScoreError,
        match=rf"server at {served.url} returned non-finite scores \[nan, nan\] \(reward 'nan_reward' returned",
    ):
        remote(make_batch())  # the trainer skips the step on this error, as for a local reward
    assert_serves(served)


def test_client_splits_batches_to_fit_the_server_limit():
    server = RewardServer([get_reward("brightness")], port=0, max_body_bytes=8 << 10)
    server.start()
    try:
        batch = make_batch(n=9, size=16)  # 3 KiB per sample: 27 KiB in all, at most 2 per request
        remote = get_reward(f"remote:{server.url}")
        torch.testing.assert_close(remote(batch), get_reward("brightness")(batch), atol=0, rtol=0)
        batch.prompts = [f"{i} " + "long prompt " * 300 for i in range(9)]  # the size estimate misses these
        torch.testing.assert_close(remote(batch), get_reward("brightness")(batch), atol=0, rtol=0)
        with pytest.raises(ValueError, match=r"one sample takes \d+ bytes.*restart the server with --max-body-mb 1"):
            remote(make_batch(n=1, size=64))
    finally:
        stop(server)


# ---------------------------------------------------------------------------------------------- client side
class Broken(BaseHTTPRequestHandler):
    """A server that lists one reward like a reward server, then answers POSTs with `server.score_reply`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        flags = {"needs_source": False, "needs_video": False, "needs_audio": False, "higher_is_better": True}
        self._send(json.dumps({"rewards": [{"name": "x", "description": "broken", **flags}]}).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.score_reply is None:
            self.close_connection = True  # hang up without a word
            return
        self._send(self.server.score_reply)


@pytest.fixture
def broken():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    stop(server)


@pytest.mark.parametrize(
    "reply, error, message",
    [
        (b"<html>oops</html>", ValueError, r"not JSON \{\"scores\": \[one number per sample\]\}.*oops"),
        (b'{"score": [1, 2]}', ValueError, "not JSON"),
        (b'{"scores": ["a", "b"]}', ValueError, "not JSON"),
        (b'{"scores": [1.0]}', ValueError, r"returned 1 scores of shape \(1,\) for 2 samples"),
        (b'{"scores": [NaN, 1.0]}', NonFiniteScoreError, r"returned non-finite scores \[nan, 1.0\]"),
        (b'{"scores": [Infinity, 1.0]}', NonFiniteScoreError, "non-finite"),
        (None, ConnectionError, "closed the connection without an answer"),
    ],
)
def test_client_names_the_server_for_broken_replies(broken, reply, error, message):
    broken.score_reply = reply
    url = f"http://127.0.0.1:{broken.server_address[1]}"
    remote = RemoteReward(url, "x", timeout=2, retries=0)
    with pytest.raises(error, match=message) as caught:
        remote(make_batch())
    assert url in str(caught.value)


def test_client_against_a_closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    remote = RemoteReward(f"http://127.0.0.1:{port}", "brightness", retries=1)
    started = time.monotonic()
    with pytest.raises(
        ConnectionError,
        match=rf"cannot connect to http://127.0.0.1:{port}/rewards \(connection "
        r"refused, 2 attempt\(s\)\)\. Is the server running\?",
    ):
        remote(make_batch())
    assert time.monotonic() - started < 2  # one 0.5 s backoff, no hanging


def test_client_times_out_on_a_slow_server(monkeypatch):
    server = RewardServer([Sleepy(2.0)], port=0)
    server.start()
    try:
        monkeypatch.setenv("PSLIDER_REMOTE_TIMEOUT", "0.3")
        monkeypatch.setenv("PSLIDER_REMOTE_RETRIES", "0")
        remote = get_reward(f"remote:{server.url}#sleepy")
        started = time.monotonic()
        with pytest.raises(
            TimeoutError,
            match=rf"{server.url}/score/sleepy did not answer within 0.3 s \(1 attempt\(s\)\); "
            r"set PSLIDER_REMOTE_TIMEOUT=<seconds> \(now 0.3\) if it is only slow",
        ):
            remote(make_batch())
        assert time.monotonic() - started < 1.0
    finally:
        stop(server)


def test_client_connect_timeout():
    with socket.socket() as listener:  # a full accept queue drops new SYNs, like a host that does not answer
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = socket.create_connection(listener.getsockname())
        try:
            url = f"http://127.0.0.1:{listener.getsockname()[1]}"
            remote = RemoteReward(url, "x", connect_timeout=0.2, retries=0)
            with pytest.raises(TimeoutError, match=rf"{url}/rewards did not accept a connection within 0.2 s"):
                remote(make_batch())
        finally:
            filler.close()


@pytest.mark.parametrize("name, value", [("PSLIDER_REMOTE_TIMEOUT", "soon"), ("PSLIDER_REMOTE_RETRIES", "-1")])
def test_client_settings_from_the_environment_are_checked(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=rf"{name}='{value}' is not valid; set it to"):
        get_reward("remote:http://127.0.0.1:9#brightness")
