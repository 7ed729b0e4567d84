"""What can go wrong in the gateway, each with the status and OpenAI error ``type``/``code`` it is
said with (the edge renders ``{"error": {"message", "type", "param", "code"}}``, api/wire/openai.py).

An upstream's own answers are told apart from its failures: a request the upstream
refused as malformed (400, 404, 409, 413, 422) keeps its status, as a 429 does (with
its ``retry-after``), since the caller can act on them; everything else the upstream
did (a 5xx, a refused key of opencone's, a connection that failed) is a 502, and a
timeout a 504, always with the upstream's own message.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai

from opencone.gateway.registry import NoModelConfigured, UnknownModel


class GatewayError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(GatewayError):
    """The request cannot be done as asked (a field's value, a feature this model lacks)."""


class NotFound(GatewayError):
    status = 404


class ModelNotFound(NotFound):
    code = "model_not_found"


class NoModel(GatewayError):
    code = "no_model_configured"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


def model_error(exc: LookupError) -> GatewayError:
    """The registry's NoModelConfigured / UnknownModel, with its message (the settings to set, or
    the models there are)."""
    if isinstance(exc, NoModelConfigured):
        return NoModel(str(exc), param="model")
    assert isinstance(exc, UnknownModel)
    return ModelNotFound(str(exc), param="model")


_PASSED_ON = {400, 404, 409, 413, 422, 429}


def upstream_error(exc: Exception, where: str) -> GatewayError:
    """An exception of the ``openai`` or ``anthropic`` SDK as the gateway says it; ``where`` names
    the upstream (its model id), never its key."""
    if isinstance(exc, openai.APITimeoutError | anthropic.APITimeoutError):
        refused = _refused(exc)
        if refused is not None:
            return UpstreamError(f"{where} could not be reached: {refused}")
        return UpstreamTimeout(f"{where} did not answer in time: {exc}")
    if isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        status = exc.status_code
        message = f"{where} answered {status}: {_upstream_message(exc)}"
        if status in _PASSED_ON:
            headers = {}
            retry_after = exc.response.headers.get("retry-after")
            if status == 429 and retry_after:
                headers["retry-after"] = retry_after
            kind = "rate_limit_error" if status == 429 else "invalid_request_error"
            err = GatewayError(message, status=status, code=_upstream_code(exc), headers=headers)
            err.type = kind
            return err
        if status in (401, 403):
            message += " (the key opencone sends is refused: check the upstream's API key setting)"
        return UpstreamError(message)
    if isinstance(exc, openai.APIConnectionError | anthropic.APIConnectionError):
        cause = exc.__cause__ or exc
        return UpstreamError(f"{where} could not be reached: {cause}")
    if isinstance(exc, openai.APIError | anthropic.APIError):  # e.g. an error event in a stream
        return UpstreamError(f"{where}: {exc}")
    raise exc


def _refused(exc: BaseException) -> BaseException | None:
    """The connection error under a "timeout": the SDKs' aiohttp transport says ConnectTimeout
    for a connection refused (aiohttp's ClientConnectorError is both of the kinds it maps)."""
    seen: BaseException | None = exc
    for _ in range(8):
        seen = seen.__cause__ or seen.__context__ if seen is not None else None
        if seen is None:
            return None
        if type(seen).__name__ == "ClientConnectorError" or isinstance(seen, ConnectionRefusedError):
            return seen
    return None


def _upstream_message(exc: openai.APIStatusError | anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(body.get("detail"), str):
            return str(body["detail"])
    text = exc.response.text if exc.response is not None else ""
    return (text or str(exc.message))[:2000]


def _upstream_code(exc: openai.APIStatusError | anthropic.APIStatusError) -> str | None:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            code = err.get("code") or err.get("type")
            return code if isinstance(code, str) else None
    return None
