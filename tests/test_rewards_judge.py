"""The VLM judge against a real HTTP server on 127.0.0.1 speaking the OpenAI chat format with logprobs."""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from pslider_core.rewards import RewardBatch, get_reward

torch.set_num_threads(1)


def decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def logprob(p: float) -> float:
    return math.log(max(p, 1e-12))


def judged(p: float) -> dict:
    """Answer whose digit probabilities are 5 -> p, 0 -> 1 - p, spread over spellings, plus a non-digit."""
    top = [
        {"token": "5", "logprob": logprob(0.6 * p)},
        {"token": " 5", "logprob": logprob(0.2 * p)},
        {"token": "0", "logprob": logprob(0.8 * (1 - p))},
        {"token": "Sure", "logprob": logprob(0.2)},
    ]
    chosen = "5" if p >= 0.5 else "0"
    return {"token": chosen, "logprob": logprob(0.8 * max(p, 1 - p)), "top_logprobs": top}


class FakeOpenAI(BaseHTTPRequestHandler):
    """A chat-completions endpoint: the judged digit distribution follows the last image's brightness."""

    def log_message(self, *args) -> None:
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the timeout test hangs up on purpose
            pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append({"path": self.path, "payload": payload, "auth": self.headers.get("Authorization")})
        mode = self.server.modes.pop(0) if self.server.modes else self.server.default_mode
        if mode == "slow":
            time.sleep(1.0)
        if mode == "error500":
            return self._send(500, b'{"error": "overloaded"}')
        if mode == "error400":
            return self._send(400, b'{"error": "top_logprobs must be <= 5"}')
        if mode == "garbage":
            return self._send(200, b"<html>not json</html>")
        images = [part["image_url"]["url"] for part in payload["messages"][0]["content"] if part["type"] == "image_url"]
        p = decode_data_url(images[-1]).mean() / 255
        message = {"role": "assistant", "content": "5" if p >= 0.5 else "0"}
        choice = {"index": 0, "message": message, "logprobs": {"content": [judged(p)]}}
        if mode == "no_logprobs":
            choice["logprobs"] = None
        elif mode == "preamble":
            first = {
                "token": "Score",
                "logprob": -0.1,
                "top_logprobs": [{"token": "Score", "logprob": -0.1}, {"token": "3", "logprob": -3}],
            }
            last = {
                "token": " 4",
                "logprob": logprob(0.5),
                "top_logprobs": [{"token": " 4", "logprob": logprob(0.5)}, {"token": "2", "logprob": logprob(0.5)}],
            }
            choice["logprobs"]["content"] = [first, {"token": ":", "logprob": 0.0, "top_logprobs": []}, last]
        elif mode == "malformed":
            choice["logprobs"]["content"] = [{"logprob": -0.1}]
        elif mode == "words":
            choice["logprobs"]["content"] = [
                {"token": "Nice", "logprob": 0.0, "top_logprobs": [{"token": "Nice", "logprob": 0.0}]}
            ]
            message["content"] = "Nice"
        self._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": [choice]}).encode())


@pytest.fixture
def openai_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    server.daemon_threads = True
    server.seen, server.modes, server.default_mode = [], [], "ok"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    server.server_close()


def make_batch(n: int = 3, sources: bool = False) -> RewardBatch:
    gen = torch.Generator().manual_seed(0)
    levels = torch.linspace(0.1, 0.9, n).view(n, 1, 1, 1)
    images = (levels + 0.05 * torch.rand(n, 3, 16, 16, generator=gen)).clamp(0, 1)
    src = torch.rand(n, 3, 24, 24, generator=gen) if sources else None
    return RewardBatch(images=images, prompts=[f"prompt {i}" for i in range(n)], sources=src)


def quantized_mean(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().mean(dim=(1, 2, 3)) / 255


def test_judge_scores_expected_digit_from_logprobs(openai_server, monkeypatch):
    monkeypatch.setenv("PSLIDER_TEST_KEY", "sk-test")
    batch = make_batch()
    reward = get_reward(
        f"vlm_judge(url={openai_server.url}, style=a pencil sketch, api_key_env=PSLIDER_TEST_KEY, model=judge-7b)"
    )
    scores = reward(batch)
    torch.testing.assert_close(scores, quantized_mean(batch.images), atol=1e-5, rtol=0)
    assert len(openai_server.seen) == 3
    for request in openai_server.seen:
        payload = request["payload"]
        assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
        assert payload["model"] == "judge-7b" and payload["logprobs"] is True and payload["top_logprobs"] == 20
        assert 1 <= payload["max_tokens"] <= 5
        content = payload["messages"][0]["content"]
        assert [part["type"] for part in content] == ["image_url", "text"]
        assert "a pencil sketch" in content[1]["text"] and "0 to 5" in content[1]["text"]
    sent = sorted(
        decode_data_url(r["payload"]["messages"][0]["content"][0]["image_url"]["url"]).mean()
        for r in openai_server.seen
    )
    expected = sorted((batch.images * 255).round().permute(0, 2, 3, 1).numpy().mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(sent, expected)


def test_judge_editing_rubric_sends_the_source_first(openai_server):
    batch = make_batch(n=2, sources=True)
    reward = get_reward(f"vlm_judge(url={openai_server.url}, rubric=preservation)")
    assert reward.needs_source and reward.max_score == 9
    scores = reward(batch)
    torch.testing.assert_close(scores, quantized_mean(batch.images) * 5 / 9, atol=1e-5, rtol=0)
    for request in openai_server.seen:
        content = request["payload"]["messages"][0]["content"]
        assert [part["type"] for part in content] == ["image_url", "image_url", "text"]
        assert decode_data_url(content[0]["image_url"]["url"]).shape == (24, 24, 3)  # the source
        assert "prompt" in content[2]["text"] and "0 to 9" in content[2]["text"]
    with pytest.raises(ValueError, match="sources="):
        reward(make_batch(n=2))


def test_judge_reads_the_first_digit_answer_token(openai_server):
    openai_server.default_mode = "preamble"
    reward = get_reward(
        f'vlm_judge(url={openai_server.url}, rubric="Rate it. Answer 0 to {{max_score}}.", max_score=5)'
    )
    torch.testing.assert_close(reward(make_batch(n=1)), torch.tensor([(4 * 0.5 + 2 * 0.5) / 5]))


def test_judge_retries_server_errors(openai_server):
    openai_server.modes = ["error500"]
    reward = get_reward(f"vlm_judge(url={openai_server.url}, style=ink, retries=1, concurrency=1)")
    batch = make_batch(n=1)
    torch.testing.assert_close(reward(batch), quantized_mean(batch.images), atol=1e-5, rtol=0)
    assert len(openai_server.seen) == 2


@pytest.mark.parametrize(
    "mode, error, message",
    [
        ("no_logprobs", ValueError, "returned no logprobs.*vLLM"),
        ("garbage", ValueError, "non-JSON reply"),
        ("malformed", ValueError, "malformed logprobs"),
        ("words", ValueError, "contains no digit 0..5.*'Nice'"),
        ("error400", RuntimeError, "HTTP 400.*top_logprobs must be <= 5"),
        ("slow", TimeoutError, "did not answer within 0.3 s"),
    ],
)
def test_judge_errors_are_clear(openai_server, mode, error, message):
    openai_server.default_mode = mode
    reward = get_reward(f"vlm_judge(url={openai_server.url}, style=ink, timeout=0.3, retries=0)")
    with pytest.raises(error, match=message):
        reward(make_batch(n=1))
    assert len(openai_server.seen) == 1  # no retry on a client error or a bad reply


def test_judge_without_server_says_so():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reward = get_reward(f"vlm_judge(url=http://127.0.0.1:{port}/v1, style=ink, retries=0)")
    with pytest.raises(
        ConnectionError, match=rf"cannot connect to http://127.0.0.1:{port}/v1/chat/completions.*Is the server running"
    ):
        reward(make_batch(n=1))


def test_judge_rejects_bad_configuration():
    with pytest.raises(ValueError, match="needs style="):
        get_reward("vlm_judge")
    with pytest.raises(ValueError, match="unknown rubric preset 'photoreal'; use one of style, photorealism"):
        get_reward("vlm_judge(rubric=photoreal)")
    with pytest.raises(ValueError, match="max_score must be 1..9"):
        get_reward("vlm_judge(rubric=photorealism, max_score=10)")
