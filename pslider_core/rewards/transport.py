"""HTTP calls for rewards that run elsewhere (VLM judges, the reward server): retries and clear errors."""

from __future__ import annotations

import time
from http.client import RemoteDisconnected

import requests

RETRY_STATUS = {429, 500, 502, 503, 504}


def _causes(error: BaseException):
    """`error` and everything it wraps: requests nests urllib3 errors in args and `reason`, not only __cause__."""
    seen, stack = set(), [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args):
            if isinstance(inner, BaseException):
                stack.append(inner)


def _connection_error(what: str, url: str, error: requests.exceptions.ConnectionError, attempts: str) -> str:
    causes = list(_causes(error))
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return (
            f"{what}: cannot connect to {url} (connection refused, {attempts}). Is the server running? "
            "Start it, or fix the url in the reward spec"
        )
    if any(isinstance(c, (RemoteDisconnected, ConnectionResetError, BrokenPipeError)) for c in causes):
        return (
            f"{what}: {url} closed the connection without an answer ({attempts}); "
            "the server's log says why (it may have crashed or dropped the request)"
        )
    return (
        f"{what}: cannot connect to {url} ({causes[-1]}, {attempts}). Is the server running? "
        "Start it, or fix the url in the reward spec"
    )


def request(
    method: str,
    url: str,
    *,
    what: str,
    timeout: float,
    retries: int,
    backoff: float = 0.5,
    connect_timeout: float | None = None,
    timeout_hint: str = "raise timeout=",
    **kwargs,
) -> requests.Response:
    """`requests.request` that retries connection errors, timeouts and 429/5xx, then raises with the fix.

    `timeout` bounds every wait for the server's next bytes, `connect_timeout` (default `timeout`) the TCP
    connect; `timeout_hint` tells the user how to raise `timeout`. Raises ConnectionError (nothing listening,
    or the connection dropped), TimeoutError (no connection or no answer in time) or RuntimeError (an HTTP
    error status, with the server's message).
    """
    attempts = f"{retries + 1} attempt(s)"
    limits = timeout if connect_timeout is None else (connect_timeout, timeout)
    error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            response = requests.request(method, url, timeout=limits, **kwargs)
        except requests.exceptions.ConnectTimeout as exc:
            error = TimeoutError(
                f"{what}: {url} did not accept a connection within {connect_timeout or timeout:g} s ({attempts}); "
                "check the host and port, and that the machine is up and reachable"
            )
            error.__cause__ = exc
            continue
        except requests.exceptions.Timeout as exc:
            error = TimeoutError(
                f"{what}: {url} did not answer within {timeout:g} s ({attempts}); "
                f"{timeout_hint} if it is only slow, or check that the server is not overloaded or stuck"
            )
            error.__cause__ = exc
            continue
        except requests.exceptions.ConnectionError as exc:
            error = ConnectionError(_connection_error(what, url, exc, attempts))
            error.__cause__ = exc
            continue
        if response.status_code < 400:
            return response
        error = RuntimeError(f"{what}: {url} answered HTTP {response.status_code}: {response.text[:1000]}")
        if response.status_code not in RETRY_STATUS:
            break
    raise error
