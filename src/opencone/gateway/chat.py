"""``/v1/chat/completions``: passed on to OpenAI-compatible upstreams, translated for Anthropic.

OpenAI-compatible upstreams (providers ``openai``, ``openai-chat``, ``lightcone``)
get the body as it came, but for its model (the upstream's name) and its images
(our own screenshot links inlined), through the ``openai`` SDK's own request
method (``client.post``: its auth, base URL, retries with backoff, timeouts and
error types, without building and parsing typed objects, which cost a call a
millisecond here), and their answer goes back byte for byte: the JSON, or the
SSE stream chunk by chunk as it arrives (the usage chunk and ``data: [DONE]`` are
the upstream's own). Fields OpenAI proper does not know (vLLM's ``top_k``,
``repetition_penalty``…, spec a.6) are dropped for provider ``openai``, and named
in the ``x-opencone-dropped-fields`` header; the others are sent to servers that
take them. Anthropic models go through anthropic_chat.py and the ``anthropic`` SDK.

The Responses emulator (responses_emulated.py) calls the same upstreams through
``chunks`` and ``completion``, which hand back parsed chunks and completions.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pydantic_core
from openai.types.chat.completion_create_params import CompletionCreateParamsBase

from opencone.gateway import anthropic_chat, sse
from opencone.gateway.clients import UpstreamClients
from opencone.gateway.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout, upstream_error
from opencone.gateway.registry import ModelEntry

# what OpenAI's own API takes; the rest (vLLM's extras) is dropped for provider "openai"
OPENAI_CHAT_FIELDS = frozenset(typing.get_type_hints(CompletionCreateParamsBase)) | {"stream"}


@dataclass
class ChatAnswer:
    """What the edge sends: a JSON body, or an SSE stream of bytes."""

    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    dropped: list[str] = field(default_factory=list)


def validate(body: Any) -> dict[str, Any]:
    """The few things every upstream needs, checked before any is called (400 naming the field)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object with messages", param=None)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("messages is required: a non-empty list of {role, content} objects", param="messages")
    for name in ("model",):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InvalidRequest(f"{name} must be a string", param=name)
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise InvalidRequest("stream must be true or false", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("stream_options must be an object, e.g. {\"include_usage\": true}",
                             param="stream_options")
    return body


def upstream_body(entry: ModelEntry, body: dict[str, Any], known: frozenset[str]) -> tuple[dict[str, Any], list[str]]:
    """The body an OpenAI-compatible upstream gets: its model name; for OpenAI itself, only the
    fields it knows (``known``), and the names of those dropped."""
    out = {**body, "model": entry.upstream_model}
    dropped: list[str] = []
    if entry.provider == "openai":
        dropped = sorted(k for k in out if k not in known)
        for name in dropped:
            del out[name]
    return out, dropped


def _openai_arguments(entry: ModelEntry, body: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the SDK's typed ``chat.completions.create`` (for the emulator, which
    reads the parsed chunks). Everything but the model rides in ``extra_body``, which the SDK
    sends as it is: its typed path walks every field of ``messages`` against its TypedDicts,
    tens of milliseconds for a few screenshots."""
    rest, _ = upstream_body(entry, body, OPENAI_CHAT_FIELDS)
    rest.pop("model")
    stream = bool(rest.pop("stream", False))
    return {"model": entry.upstream_model, "messages": [], "stream": stream, "extra_body": rest}


def _anthropic_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """``messages.create`` arguments with the conversation in ``extra_body`` (as above)."""
    extra = {**params.pop("extra_body", {}), **{k: params.pop(k) for k in ("messages", "system", "tools")
                                                  if k in params}}
    return {**params, "messages": [], "extra_body": extra}


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


class ChatGateway:
    def __init__(self, upstreams: UpstreamClients) -> None:
        self.upstreams = upstreams

    # -- the HTTP endpoint -------------------------------------------------------------------
    async def answer(self, entry: ModelEntry, body: dict[str, Any]) -> ChatAnswer:
        """The upstream's answer to a chat body (images already inlined), for the edge to send."""
        if entry.provider == "anthropic":
            return await self._anthropic_answer(entry, body)
        payload, dropped = upstream_body(entry, body, OPENAI_CHAT_FIELDS)
        answer = await raw_call(self.upstreams.openai(entry), "post", "/chat/completions", entry.id, body=payload,
                                stream=bool(payload.get("stream")))
        if isinstance(answer, bytes):
            return ChatAnswer(body=answer, dropped=dropped)
        return ChatAnswer(stream=answer, dropped=dropped)

    async def _anthropic_answer(self, entry: ModelEntry, body: dict[str, Any]) -> ChatAnswer:
        dropped = sorted(k for k in body if k not in anthropic_chat.supported_fields())
        if not body.get("stream"):
            return ChatAnswer(body=pydantic_core.to_json(await self.completion(entry, body)), dropped=dropped)
        chunks = self.chunks(entry, body)
        first = await _first(chunks)  # an upstream that refuses is an HTTP error, not a broken stream

        async def framed() -> AsyncIterator[bytes]:
            async with contextlib.aclosing(chunks):
                try:
                    if first is not None:
                        yield sse.data(first)
                    async for chunk in chunks:
                        yield sse.data(chunk)
                except GatewayError as exc:
                    yield sse.data(exc.body())
                yield sse.DONE

        return ChatAnswer(stream=framed(), dropped=dropped)

    # -- parsed, for the Responses emulator --------------------------------------------------
    async def completion(self, entry: ModelEntry, body: dict[str, Any]) -> dict[str, Any]:
        """A ``chat.completion`` as a dict."""
        body = {**body, "stream": False}
        try:
            if entry.provider == "anthropic":
                params = _anthropic_arguments(anthropic_chat.messages_params(body, entry.upstream_model))
                message = await self.upstreams.anthropic(entry).messages.create(**params)
                return anthropic_chat.completion(message.to_dict(), entry.id)
            arguments = _openai_arguments(entry, body)
            result = await self.upstreams.openai(entry).chat.completions.create(**arguments)
            return result.to_dict()  # type: ignore[no-any-return]
        except GatewayError:
            raise
        except Exception as exc:
            raise upstream_error(exc, entry.id) from None

    async def chunks(self, entry: ModelEntry, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` dicts, as the upstream streams them."""
        body = {**body, "stream": True}
        try:
            if entry.provider == "anthropic":
                params = _anthropic_arguments(anthropic_chat.messages_params(body, entry.upstream_model))
                translator = anthropic_chat.ChunkTranslator(entry.id, _include_usage(body))
                events = await self.upstreams.anthropic(entry).messages.create(**params, stream=True)
                async with events:
                    async for event in events:
                        for chunk in translator.feed(event.to_dict()):
                            yield chunk
                return
            arguments = _openai_arguments(entry, body)
            stream = await self.upstreams.openai(entry).chat.completions.create(**arguments)
            async with stream:
                async for chunk in stream:
                    yield chunk.to_dict()
        except GatewayError:
            raise
        except Exception as exc:
            raise upstream_error(exc, entry.id) from None


async def _first(chunks: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


async def raw_call(client: Any, method: str, path: str, where: str, *, body: Any = None,
                   params: dict[str, Any] | None = None, stream: bool = False) -> bytes | AsyncIterator[bytes]:
    """One request through the SDK's own ``get``/``post``/``delete``: the answer's bytes, or (``stream``)
    its bytes as they come. SDK exceptions come out as the gateway's (``upstream_error``)."""
    options: dict[str, Any] = {"params": params} if params else {}
    try:
        if method == "post":
            response = await client.post(path, body=body, cast_to=httpx2.Response, stream=stream, options=options)
        elif method == "get":
            response = await client.get(path, cast_to=httpx2.Response, stream=stream, options=options)
        else:
            response = await client.delete(path, cast_to=httpx2.Response, options=options)
    except Exception as exc:
        raise upstream_error(exc, where) from None
    if not stream:
        return response.content  # type: ignore[no-any-return]
    return passed_on(response, where)


async def passed_on(response: httpx2.Response, where: str) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes as they arrive; a failure after the first byte is one error chunk
    (which the OpenAI SDK raises as an ``APIError``), then ``[DONE]``."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx2.TimeoutException as exc:
        yield sse.data(UpstreamTimeout(f"{where} stopped answering: {exc}").body())
        yield sse.DONE
    except httpx2.HTTPError as exc:
        yield sse.data(UpstreamError(f"{where} broke off its stream: {exc}").body())
        yield sse.DONE
    finally:
        with contextlib.suppress(Exception):
            await response.aclose()
