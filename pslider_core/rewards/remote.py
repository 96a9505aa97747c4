"""`remote:<server url>#<reward spec>`: a reward scored by a `pslider-reward-server` elsewhere.

Without `#<reward spec>` the server must serve exactly one reward. The flags (needs_source, higher_is_better,
...) and the description come from the server's /rewards on first use.
"""

from __future__ import annotations

from urllib.parse import quote

import torch

from .base import Reward, RewardBatch
from .registry import UnknownRewardError
from .spec import spec_key
from .transport import request
from .wire import encode_batch

PREFIX = "remote:"


class RemoteReward(Reward):
    """Sends each batch to a reward server; scores come back exactly (float32 on the wire)."""

    def __init__(self, url: str, reward: str | None = None, timeout: float = 600.0, retries: int = 2) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"remote reward url must start with http:// or https://, got {url!r}")
        self.url, self.remote_name, self.timeout, self.retries = url.rstrip("/"), reward, timeout, retries
        self.name = PREFIX + self.url + (f"#{reward}" if reward else "")
        self._info: dict | None = None

    @classmethod
    def from_spec(cls, spec: str) -> RemoteReward:
        url, _, reward = spec[len(PREFIX) :].strip().partition("#")
        return cls(url.strip(), reward.strip() or None)

    def info(self) -> dict:
        """The served reward's description and flags (fetched once)."""
        if self._info is None:
            what = f"remote reward {self.name!r}"
            served = request("GET", self.url + "/rewards", what=what, timeout=self.timeout, retries=self.retries)
            try:
                rewards = served.json()["rewards"]
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

    def score(self, batch: RewardBatch) -> torch.Tensor:
        served = self.info()["name"]
        response = request(
            "POST",
            f"{self.url}/score/{quote(served, safe='')}",
            what=f"remote reward {self.name!r}",
            timeout=self.timeout,
            retries=self.retries,
            data=encode_batch(batch),
            headers={"Content-Type": "application/octet-stream"},
        )
        try:
            return torch.tensor(response.json()["scores"], dtype=torch.float32)
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"remote reward {self.name!r}: malformed reply {response.text[:300]!r}") from None
