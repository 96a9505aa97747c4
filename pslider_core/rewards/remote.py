"""`remote:<server url>#<reward spec>`: a reward scored by a `pslider-reward-server` elsewhere.

Without `#<reward spec>` the server must serve exactly one reward. The flags (needs_source, higher_is_better,
...), the description and the server's body limit come from the server's /rewards on first use; batches whose
body would pass that limit are sent in several requests.

Timeouts and retries are transport settings, not part of the reward's identity (the spec, which checkpoints
record), so they come from the environment: PSLIDER_REMOTE_TIMEOUT (seconds to wait for the server's answer,
default 600), PSLIDER_REMOTE_CONNECT_TIMEOUT (seconds to connect, default 10) and PSLIDER_REMOTE_RETRIES
(attempts after the first, on connection errors, timeouts, 429 and 5xx; default 2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from urllib.parse import quote

import requests
import torch

from .base import NonFiniteScoreError, Reward, RewardBatch
from .registry import UnknownRewardError
from .spec import spec_key
from .transport import request
from .wire import encode_batch

PREFIX = "remote:"
TIMEOUT_ENV, CONNECT_TIMEOUT_ENV, RETRIES_ENV = (
    "PSLIDER_REMOTE_TIMEOUT",
    "PSLIDER_REMOTE_CONNECT_TIMEOUT",
    "PSLIDER_REMOTE_RETRIES",
)
DEFAULT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_RETRIES = 600.0, 10.0, 2


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"{name}={raw!r} is not valid; set it to a number of seconds > 0 (default {default:g})")
    return value


def _env_retries() -> int:
    raw = os.environ.get(RETRIES_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRIES
    if not raw.isdigit():
        raise ValueError(f"{RETRIES_ENV}={raw!r} is not valid; set it to an integer >= 0 (default {DEFAULT_RETRIES})")
    return int(raw)


class RemoteReward(Reward):
    """Sends each batch to a reward server; scores come back exactly (float32 on the wire)."""

    def __init__(
        self,
        url: str,
        reward: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"remote reward url must start with http:// or https://, got {url!r}")
        self.url, self.remote_name = url.rstrip("/"), reward
        self.timeout = _env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT) if timeout is None else timeout
        self.connect_timeout = (
            _env_seconds(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT) if connect_timeout is None else connect_timeout
        )
        self.retries = _env_retries() if retries is None else retries
        if self.timeout <= 0 or self.connect_timeout <= 0 or self.retries < 0:
            raise ValueError("remote reward: timeout and connect_timeout must be > 0 and retries >= 0")
        self.name = PREFIX + self.url + (f"#{reward}" if reward else "")
        self._info: dict | None = None
        self._max_body_bytes: int | None = None

    @classmethod
    def from_spec(cls, spec: str) -> RemoteReward:
        url, _, reward = spec[len(PREFIX) :].strip().partition("#")
        return cls(url.strip(), reward.strip() or None)

    def _request(self, method: str, url: str, **kwargs) -> requests.Response:
        return request(
            method,
            url,
            what=f"remote reward {self.name!r}",
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            retries=self.retries,
            timeout_hint=f"set {TIMEOUT_ENV}=<seconds> (now {self.timeout:g})",
            **kwargs,
        )

    def info(self) -> dict:
        """The served reward's description and flags (fetched once)."""
        if self._info is None:
            what = f"remote reward {self.name!r}"
            served = self._request("GET", self.url + "/rewards")
            try:
                reply = served.json()
                rewards = reply["rewards"]
                names = [r["name"] for r in rewards]
            except (ValueError, KeyError, TypeError):
                raise ValueError(
                    f"{what}: {self.url}/rewards is not a reward server reply: {served.text[:300]!r}"
                ) from None
            if self.remote_name is None:
                if len(rewards) != 1:
                    raise ValueError(
                        f"{what}: the server serves {len(rewards)} rewards ({', '.join(names)}); "
                        f"name one: {PREFIX}{self.url}#<reward>"
                    )
                self._info = rewards[0]
            else:
                wanted = spec_key(self.remote_name)
                matches = [r for r in rewards if spec_key(r["name"]) == wanted]
                if not matches:
                    raise UnknownRewardError(
                        f"{what}: the server does not serve {self.remote_name!r}; it serves {', '.join(names)}"
                    )
                self._info = matches[0]
            limit = reply.get("max_body_bytes")
            self._max_body_bytes = limit if isinstance(limit, int) and limit > 0 else None
        return self._info

    @property
    def description(self) -> str:
        return f"{self.info()['description']} (at {self.url})"

    @property
    def needs_source(self) -> bool:
        return self.info()["needs_source"]

    @property
    def needs_video(self) -> bool:
        return self.info()["needs_video"]

    @property
    def needs_audio(self) -> bool:
        return self.info()["needs_audio"]

    @property
    def higher_is_better(self) -> bool:
        return self.info()["higher_is_better"]

    def _bodies(self, batch: RewardBatch) -> Iterator[tuple[int, bytes]]:
        """(samples, body) pairs, as many samples per body as fit the server's limit."""
        limit, n = self._max_body_bytes, len(batch)
        tensors = [t for t in (batch.images, batch.sources, batch.audio) if t is not None]
        per_sample = sum(t.numel() for t in tensors) * 4 // n
        step = n if limit is None else max(1, min(n, limit // max(1, per_sample)))
        start = 0
        while start < n:
            part = batch if step >= n else batch.select(start, start + step)
            body = encode_batch(part)
            if limit is not None and len(body) > limit:
                if step == 1:
                    raise ValueError(
                        f"remote reward {self.name!r}: one sample takes {len(body)} bytes on the wire but {self.url} "
                        f"accepts at most {limit} ({limit / 2**20:g} MiB) per request; restart the server with "
                        f"--max-body-mb {len(body) // 2**20 + 1} or more"
                    )
                step = max(1, step // 2)
                continue
            yield len(part), body
            start += step

    def score(self, batch: RewardBatch) -> torch.Tensor:
        served = self.info()["name"]
        url = f"{self.url}/score/{quote(served, safe='')}"
        parts = []
        for count, body in self._bodies(batch):
            response = self._request("POST", url, data=body, headers={"Content-Type": "application/octet-stream"})
            parts.append(self._parse_scores(response, count, url))
        return torch.cat(parts)

    def _parse_scores(self, response: requests.Response, count: int, url: str) -> torch.Tensor:
        """The reply's scores, checked: JSON {"scores": [count finite numbers]}."""
        what = f"remote reward {self.name!r}"
        try:
            reply = response.json()
            scores = torch.tensor(reply["scores"], dtype=torch.float32)
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                f'{what}: {url} sent a reply that is not JSON {{"scores": [one number per sample]}}: '
                f"{response.text[:300]!r}; check that {self.url} is a pslider-reward-server"
            ) from None
        if scores.shape != (count,):
            raise ValueError(
                f"{what}: {url} returned {scores.numel()} scores of shape {tuple(scores.shape)} for {count} samples; "
                f"check that {self.url} is a pslider-reward-server of this version"
            )
        if not torch.isfinite(scores).all():
            detail = reply.get("non_finite")
            raise NonFiniteScoreError(
                f"{what}: the server at {self.url} returned non-finite scores {scores.tolist()}"
                + (f" ({detail})" if detail else "")
            )
        return scores
