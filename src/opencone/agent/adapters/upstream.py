"""Calling an upstream through the vendor's SDK, and what its failures become.

Adapters call the ``openai`` and ``anthropic`` async clients; a failure leaves
here as ``ModelCallError`` (with the HTTP status, whether a retry can help and
the ``retry-after`` the upstream asked for) or ``ModelOutputError`` (it answered,
but not with JSON we can read).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import anthropic
import httpx
import openai

from opencone.agent.adapters.base import ModelCallError, ModelOutputError

T = TypeVar("T")
RETRYABLE_STATUSES = (408, 409, 429)


def _retry_after(headers: Any) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), as the SDKs read them."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return float(ms) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            from datetime import UTC, datetime

            return (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError):
        return None


def _upstream_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"][:500]
    return str(getattr(exc, "message", exc))[:500]


@contextlib.contextmanager
def mapped(what: str) -> Iterator[None]:
    """Inside: an SDK call or a stream's iteration; its failures leave as ``ModelCallError`` /
    ``ModelOutputError``."""
    try:
        yield
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        status = exc.status_code
        raise ModelCallError(f"{what} answered {status}: {_upstream_message(exc)}", status=status,
                             retryable=status in RETRYABLE_STATUSES or status >= 500,
                             retry_after=_retry_after(exc.response.headers)) from None
    except (openai.APITimeoutError, anthropic.APITimeoutError):
        raise ModelCallError(f"{what} did not answer in time", retryable=True) from None
    except (openai.APIConnectionError, anthropic.APIConnectionError) as exc:
        raise ModelCallError(f"cannot reach {what}: {exc.__cause__ or exc}", retryable=True) from None
    except (openai.APIResponseValidationError, anthropic.APIResponseValidationError) as exc:
        raise ModelOutputError(f"{what} answered something unreadable: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelOutputError(f"{what} answered with a body that is not JSON: {exc}") from None
    except httpx.HTTPError as exc:  # a stream cut short
        raise ModelCallError(f"the connection to {what} broke: {exc}", retryable=True) from None


async def call(awaitable: Awaitable[T], what: str) -> T:
    """Await an SDK call, its failures mapped."""
    with mapped(what):
        return await awaitable


def json_body(raw: Any, what: str) -> dict[str, Any]:
    """The JSON object of a raw SDK response (``with_raw_response``): exactly what the upstream
    sent, unknown fields and all."""
    http = getattr(raw, "http_response", raw)
    try:
        data = json.loads(http.content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelOutputError(f"{what} answered with a body that is not JSON: {http.content[:200]!r}") from exc
    if not isinstance(data, dict):
        raise ModelOutputError(f"{what} answered with JSON that is not an object: {str(data)[:200]!r}", data)
    return data


def dumped(model: Any) -> dict[str, Any]:
    """An SDK model (a streamed final response or message) back to the JSON it came from."""
    if isinstance(model, dict):
        return model
    return model.to_dict(warnings=False)  # type: ignore[no-any-return]


def sdk_arguments(body: dict[str, Any], typed: tuple[str, ...], placeholders: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Keyword arguments for an SDK method: the ``typed`` fields as they are, everything else as
    ``extra_body``, which the SDK sends unchanged. Its typed path walks every nested field of a
    request against its TypedDicts: 25-40 ms for a transcript carrying three screenshots, a step's
    whole browser work. ``placeholders`` fill required parameters that ride in ``extra_body``."""
    kwargs = {k: body[k] for k in typed if k in body}
    kwargs.update(placeholders or {})
    extra = {k: v for k, v in body.items() if k not in typed}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs

