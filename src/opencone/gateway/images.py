"""Screenshots sent by opencone's own URL are inlined as data URLs before they go upstream.

Every official Lightcone example sends ``computer.get_screenshot_url(...)`` as an
``input_image``: a capability URL of this server (``/files/<token>.jpg``), on a
loopback or private address that no cloud model can fetch, and which expires.
So an image URL whose path is one of our file links, on one of our own origins
(the request's, ``OPENCONE_PUBLIC_URL``'s, this server's port on loopback), is
replaced by the JPEG itself as a ``data:`` URL. Any other URL passes through: the
upstream fetches it as it would have. A link of ours that is unknown or expired
is a 400 naming the field, not an image the model never sees.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from opencone.core.files import FileStore
from opencone.gateway.errors import InvalidRequest

# what FileStore.put hands out (api/routes/files.py checks the same)
_FILE = re.compile(r"(?P<prefix>.*)/files/(?P<token>[A-Za-z0-9_-]{16,128}\.(?:jpg|png))")


class OwnFiles:
    """Resolves this server's file links, as seen from one request."""

    def __init__(self, files: FileStore, origins: Iterable[str]) -> None:
        self.files = files
        self.origins = {o.lower().rstrip("/") for o in origins if o}

    def token(self, url: str) -> str | None:
        """The file token if ``url`` is one of our file links, else None."""
        if not url.startswith(("http://", "https://")) or "/files/" not in url:
            return None
        parts = urlsplit(url)
        match = _FILE.fullmatch(parts.path)
        if match is None or parts.query or parts.fragment:
            return None
        origin = f"{parts.scheme}://{parts.netloc}{match['prefix']}".lower()
        return match["token"] if origin in self.origins else None

    async def data_url(self, url: str, param: str) -> str:
        """``url`` as a data URL when it is ours; as it was otherwise."""
        token = self.token(url)
        if token is None:
            return url
        blob = self.files.open(token)
        if blob is None:
            raise InvalidRequest(f"{param} is an opencone screenshot link that is unknown or has expired "
                                 "(OPENCONE_FILE_TTL_SECONDS); take a new screenshot", param=param,
                                 code="invalid_image_url")
        data = blob.data
        if data is None:
            assert blob.path is not None
            try:
                data = await asyncio.to_thread(blob.path.read_bytes)
            except OSError:
                raise InvalidRequest(f"{param} is an opencone screenshot link that has expired; take a new "
                                     "screenshot", param=param, code="invalid_image_url") from None
        return f"data:{blob.media_type};base64,{base64.b64encode(data).decode('ascii')}"


def own_origins(request_base: str, public_url: str | None, port: int) -> list[str]:
    """Where our file links may point: the request's base, the public URL, loopback on our port."""
    return [request_base, public_url or "", f"http://127.0.0.1:{port}", f"http://localhost:{port}"]


async def inline_chat_messages(messages: Any, own: OwnFiles) -> Any:
    """Chat Completions ``messages`` with our own image URLs inlined (a copy where changed)."""
    if not isinstance(messages, list):
        return messages
    out = []
    for m, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(_is_image_part(p) for p in content):
            parts = []
            for p, part in enumerate(content):
                if _is_image_part(part):
                    image = part["image_url"]
                    url = image if isinstance(image, str) else image.get("url")
                    if isinstance(url, str):
                        new = await own.data_url(url, f"messages[{m}].content[{p}].image_url")
                        if new is not url:
                            image = {**image, "url": new} if isinstance(image, dict) else new
                            part = {**part, "image_url": image}
                parts.append(part)
            message = {**message, "content": parts}
        out.append(message)
    return out


def _is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "image_url" and "image_url" in part


async def inline_response_input(items: Any, own: OwnFiles) -> Any:
    """Responses ``input`` items with our own image URLs inlined: ``input_image`` parts of
    messages and the screenshot of ``computer_call_output``."""
    if not isinstance(items, list):
        return items
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            out.append(item)
            continue
        content = item.get("content")
        if isinstance(content, list):
            parts = []
            for p, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "input_image" and isinstance(
                        part.get("image_url"), str):
                    new = await own.data_url(part["image_url"], f"input[{i}].content[{p}].image_url")
                    if new is not part["image_url"]:
                        part = {**part, "image_url": new}
                parts.append(part)
            item = {**item, "content": parts}
        output = item.get("output")
        if item.get("type") == "computer_call_output" and isinstance(output, dict) and isinstance(
                output.get("image_url"), str):
            new = await own.data_url(output["image_url"], f"input[{i}].output.image_url")
            if new is not output["image_url"]:
                item = {**item, "output": {**output, "image_url": new}}
        out.append(item)
    return out
