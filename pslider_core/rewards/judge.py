"""A vision-language judge behind any OpenAI-compatible chat endpoint (vLLM, SGLang, ...).

The judge is asked for one digit 0..max_score. The score is not the sampled digit but the expected value
over the digit tokens' probabilities at the answer position, renormalised over the digits present in the
top logprobs, divided by max_score, so it lies in [0, 1] and moves smoothly (as the authors score their
Qwen2.5-VL judge). Serve e.g. `vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000`.
"""

from __future__ import annotations

import base64
import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from PIL import Image

from .base import Reward, RewardBatch
from .image_stats import to_uint8
from .registry import register_reward
from .transport import request

_ANSWER = "Answer with a single digit from 0 to {max_score} and nothing else."


@dataclass(frozen=True)
class Rubric:
    template: str  # placeholders: {prompt}, {style}, {max_score}
    max_score: int
    needs_source: bool = False


RUBRICS = {
    "style": Rubric(
        "How strongly does this image look like {style}? 0 means not at all, {max_score} means a perfect example. "
        + _ANSWER,
        5,
    ),
    "photorealism": Rubric(
        "How photorealistic is this image: does it look like a real photograph taken with a camera? 0 means clearly "
        "not a photo, {max_score} means indistinguishable from a real photo. " + _ANSWER,
        5,
    ),
    "prompt_adherence": Rubric(
        'How well does this image match the description "{prompt}"? 0 means unrelated, {max_score} means every '
        "detail matches. " + _ANSWER,
        5,
    ),
    "instruction_following": Rubric(
        'The first image is the source, the second is the result of editing it with the instruction "{prompt}". '
        "How well does the edit carry out the instruction? 0 means ignored, {max_score} means fully done. " + _ANSWER,
        9,
        needs_source=True,
    ),
    "preservation": Rubric(
        'The first image is the source, the second is the result of editing it with the instruction "{prompt}". '
        "How well does the edited image keep everything the instruction did not ask to change (identity, layout, "
        "background, details)? 0 means nothing kept, {max_score} means everything kept. " + _ANSWER,
        9,
        needs_source=True,
    ),
}


def png_data_url(image) -> str:
    """(H,W,3) uint8 array -> `data:image/png;base64,...`."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def expected_digit(reply: dict, max_score: int, url: str) -> float:
    """Expected digit / max_score at the first answer token that is a digit, from a chat completion reply."""
    try:
        choice = reply["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"vlm_judge: {url} sent no 'choices' in its reply: {str(reply)[:300]}") from None
    logprobs = (choice.get("logprobs") or {}).get("content")
    if not logprobs:
        raise ValueError(
            f"vlm_judge: {url} returned no logprobs. The judge needs a server that honours logprobs=true and "
            "top_logprobs (vLLM does; start it with --max-logprobs 20 or more if it rejects top_logprobs=20)"
        )
    digits = {str(d): d for d in range(max_score + 1)}
    try:
        for position in logprobs:
            if position["token"].strip() not in digits:
                continue
            candidates = list(position.get("top_logprobs") or [])
            if position["token"] not in {c["token"] for c in candidates}:
                candidates.append(position)
            probs = [0.0] * (max_score + 1)
            for candidate in candidates:
                token = candidate["token"].strip()
                if token in digits:
                    probs[digits[token]] += math.exp(candidate["logprob"])
            return sum(d * p for d, p in enumerate(probs)) / sum(probs) / max_score
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"vlm_judge: malformed logprobs from {url}: {str(logprobs)[:300]}") from None
    text = (choice.get("message") or {}).get("content")
    raise ValueError(
        f"vlm_judge: the reply from {url} contains no digit 0..{max_score} (reply text: {text!r}); "
        "make the rubric ask for a single digit"
    )


@register_reward("vlm_judge")
class VlmJudge(Reward):
    """Rubric score from a vision-language model served over the OpenAI chat API."""

    name = "vlm_judge"
    description = "VLM judge over an OpenAI-compatible endpoint: expected rubric digit / max, in [0, 1]"

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000/v1",
        model: str = "Qwen/Qwen2.5-VL-7B-Instruct",
        rubric: str = "style",
        style: str = "",
        max_score: int | None = None,
        with_source: bool | None = None,
        timeout: float = 120.0,
        retries: int = 2,
        concurrency: int = 8,
        max_tokens: int = 3,
        api_key_env: str = "OPENAI_API_KEY",
    ) -> None:
        if rubric not in RUBRICS and " " not in rubric.strip():
            raise ValueError(
                f"vlm_judge: unknown rubric preset {rubric!r}; use one of {', '.join(RUBRICS)} or pass the whole "
                'question, e.g. rubric="How sketch-like is this image? Answer with one digit from 0 to {max_score}."'
            )
        preset = RUBRICS.get(rubric, Rubric(rubric, 5))
        self.template = preset.template
        self.max_score = preset.max_score if max_score is None else max_score
        self.needs_source = preset.needs_source if with_source is None else with_source
        if timeout <= 0 or retries < 0 or concurrency < 1 or max_tokens < 1:
            raise ValueError("vlm_judge: timeout must be > 0, retries >= 0, concurrency >= 1 and max_tokens >= 1")
        if not 1 <= self.max_score <= 9:
            raise ValueError(f"vlm_judge: max_score must be 1..9 (one digit token), got {self.max_score}")
        if "{style}" in self.template and not style.strip():
            raise ValueError("vlm_judge: this rubric needs style=..., e.g. vlm_judge(style=a pencil sketch)")
        self.style, self.model = style, model
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.timeout, self.retries, self.concurrency, self.max_tokens = timeout, retries, concurrency, max_tokens
        self.api_key_env = api_key_env

    def question(self, prompt: str) -> str:
        text = self.template.replace("{prompt}", prompt).replace("{style}", self.style)
        return text.replace("{max_score}", str(self.max_score))

    def payload(self, image: str, source: str | None, prompt: str) -> dict:
        """The chat request for one sample (images as PNG data URLs, source first when editing)."""
        images = [source, image] if source else [image]
        content = [{"type": "image_url", "image_url": {"url": url}} for url in images]
        content.append({"type": "text", "text": self.question(prompt)})
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": 20,
        }

    def _ask(self, payload: dict) -> float:
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = request(
            "POST",
            self.endpoint,
            what=f"reward {self.name!r}",
            timeout=self.timeout,
            retries=self.retries,
            json=payload,
            headers=headers,
        )
        try:
            reply = response.json()
        except ValueError:
            raise ValueError(f"vlm_judge: {self.endpoint} sent a non-JSON reply: {response.text[:300]!r}") from None
        return expected_digit(reply, self.max_score, self.endpoint)

    def score(self, batch: RewardBatch) -> torch.Tensor:
        images = [png_data_url(a) for a in to_uint8(batch.images)]
        sources = [png_data_url(a) for a in to_uint8(batch.sources)] if self.needs_source else [None] * len(images)
        payloads = [self.payload(*sample) for sample in zip(images, sources, batch.prompts, strict=True)]
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(payloads)))) as pool:
            return torch.tensor(list(pool.map(self._ask, payloads)))
