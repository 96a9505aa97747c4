"""The reward server and the `remote:` client end to end on 127.0.0.1, and the server's click face."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import torch
from click.testing import CliRunner

from pslider_core.rewards import Reward, RewardBatch, UnknownRewardError, get_reward
from pslider_core.rewards.server import RewardServer
from pslider_core.rewards.wire import decode_batch, encode_batch
from trainer.reward_server_cli import main

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


class Exploding(Reward):
    name = "exploding"
    description = "always fails"

    def score(self, batch):
        raise RuntimeError("GPU on fire")


def make_batch(n: int = 3, video: bool = False, sources: bool = False, seed: int = 0) -> RewardBatch:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 4, 3, 16, 16) if video else (n, 3, 16, 16)
    src = torch.rand(n, 3, 20, 20, generator=gen) if sources else None
    return RewardBatch(images=torch.rand(shape, generator=gen), prompts=[f"p{i}" for i in range(n)], sources=src)


@pytest.fixture
def served():
    specs = ["brightness", "ssim", "mse", "edge_density(low_threshold=0.05, high_threshold=0.3)"]
    server = RewardServer([get_reward(s) for s in specs] + [Exploding()], port=0)
    server.start()
    yield server
    server.shutdown()
    server.server_close()


def test_wire_round_trip_is_exact():
    batch = make_batch(video=True)
    batch.sources = torch.rand(3, 3, 8, 8)
    decoded = decode_batch(encode_batch(batch))
    assert torch.equal(decoded.images, batch.images) and torch.equal(decoded.sources, batch.sources)
    assert decoded.prompts == batch.prompts and decoded.audio is None
    with pytest.raises(ValueError, match="too short for a safetensors blob"):
        decode_batch(b"garbage")


def test_remote_equals_local(served):
    assert served.url.startswith("http://127.0.0.1:")
    for spec, batch in [
        ("brightness", make_batch()),
        ("brightness", make_batch(video=True)),
        ("ssim", make_batch(sources=True)),
        ("edge_density(high_threshold=0.3, low_threshold=0.05)", make_batch()),
    ]:
        remote = get_reward(f"remote:{served.url}#{spec}")
        assert remote.name == f"remote:{served.url}#{spec}"
        torch.testing.assert_close(remote(batch), get_reward(spec)(batch), atol=0, rtol=0)


def test_remote_reads_flags_from_the_server(served):
    mse = get_reward(f"remote:{served.url}#mse")
    assert mse.needs_source and not mse.higher_is_better and not mse.needs_video
    assert mse.description.startswith("mean squared error to the source image")
    with pytest.raises(ValueError, match=r"remote:http://127.0.0.1:\d+#mse.*sources="):
        mse(make_batch())


def test_remote_errors_are_clear(served):
    with pytest.raises(UnknownRewardError, match="does not serve 'pickscore'; it serves brightness, ssim"):
        get_reward(f"remote:{served.url}#pickscore")(make_batch())
    with pytest.raises(ValueError, match=r"serves 5 rewards.*name one: remote:http"):
        get_reward(f"remote:{served.url}")(make_batch())
    exploding = get_reward(f"remote:{served.url}#exploding")
    exploding.retries = 0
    with pytest.raises(RuntimeError, match=r"HTTP 500.*reward 'exploding' failed: RuntimeError: GPU on fire"):
        exploding(make_batch())
    with pytest.raises(ValueError, match="must start with http://"):
        get_reward("remote:127.0.0.1:8765#brightness")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nobody = get_reward(f"remote:http://127.0.0.1:{port}#brightness")
    nobody.retries = 0
    with pytest.raises(
        ConnectionError, match=rf"cannot connect to http://127.0.0.1:{port}/rewards.*Is the server running"
    ):
        nobody(make_batch())


def test_server_http_errors(served):
    listing = requests.get(served.url + "/rewards", timeout=5).json()["rewards"]
    assert [r["name"] for r in listing][:2] == ["brightness", "ssim"] and listing[2]["higher_is_better"] is False
    assert requests.get(served.url + "/health", timeout=5).json() == {"status": "ok"}
    bad_body = requests.post(served.url + "/score/brightness", data=b"xx", timeout=5)
    assert bad_body.status_code == 400 and "safetensors" in bad_body.json()["error"]
    unknown = requests.post(served.url + "/score/nope", data=encode_batch(make_batch()), timeout=5)
    assert unknown.status_code == 404 and "served: brightness, ssim" in unknown.json()["error"]
    no_source = requests.post(served.url + "/score/ssim", data=encode_batch(make_batch()), timeout=5)
    assert no_source.status_code == 400 and "sources=" in no_source.json()["error"]
    assert requests.get(served.url + "/other", timeout=5).status_code == 404
    connection = http.client.HTTPConnection("127.0.0.1", served.server_address[1], timeout=5)
    connection.putrequest("POST", "/score/brightness")
    connection.putheader("Content-Length", "-5")
    connection.endheaders()
    reply = connection.getresponse()
    assert reply.status == 400 and b"Content-Length" in reply.read()
    connection.close()


def test_server_advertises_its_body_limit(served):
    assert requests.get(served.url + "/rewards", timeout=5).json()["max_body_bytes"] == 512 << 20


def test_cli_rejects_unknown_rewards():
    result = CliRunner().invoke(main, ["--rewards", "brightness,brightnes", "--port", "0"])
    assert result.exit_code == 2
    assert "unknown reward 'brightnes'" in result.output and "--rewards" in result.output


def test_cli_serves_on_loopback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (tmp_path / "server.log").open("w")
    command = [
        sys.executable,
        "-m",
        "trainer.reward_server_cli",
        "--rewards",
        "brightness,saturation",
        "--port",
        "0",
        "--device",
        "cpu",
        "--max-body-mb",
        "0.5",
        "--read-timeout",
        "2",
        "--max-concurrent",
        "3",
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("serving brightness, saturation on http://127.0.0.1:"), line
        url = line.split(" on ")[1].strip()
        assert process.stdout.readline() == "limits: bodies up to 0.5 MiB, 2 s read timeout, 3 requests in flight\n"
        assert requests.get(url + "/rewards", timeout=5).json()["max_body_bytes"] == 1 << 19
        batch = make_batch()
        torch.testing.assert_close(get_reward(f"remote:{url}#saturation")(batch), get_reward("saturation")(batch))
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
