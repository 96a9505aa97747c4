"""HTTP calls for rewards that run elsewhere (VLM judges, the reward server): retries and clear errors."""

from __future__ import annotations

import time

import requests

RETRY_STATUS = {429, 500, 502, 503, 504}


def request(
    method: str, url: str, *, what: str, timeout: float, retries: int, backoff: float = 0.5, **kwargs
) -> requests.Response:
    """`requests.request` that retries connection errors, timeouts and 429/5xx, then raises with the fix.

    Raises ConnectionError (nothing listening), TimeoutError (no answer in `timeout` s) or RuntimeError
    (an HTTP error status, with the server's message).
    """
    error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            response = requests.request(method, url, timeout=timeout, **kwargs)
        except requests.exceptions.Timeout as exc:
            error = TimeoutError(
                f"{what}: {url} did not answer within {timeout:g} s ({retries + 1} attempt(s)); "
                "raise timeout= or check that the server is not overloaded"
            )
            error.__cause__ = exc
            continue
        except requests.exceptions.ConnectionError as exc:
            error = ConnectionError(
                f"{what}: cannot connect to {url} ({retries + 1} attempt(s)). Is the server running? "
                "Start it, or fix the url in the reward spec"
            )
            error.__cause__ = exc
            continue
        if response.status_code < 400:
            return response
        error = RuntimeError(f"{what}: {url} answered HTTP {response.status_code}: {response.text[:1000]}")
        if response.status_code not in RETRY_STATUS:
            break
    raise error
