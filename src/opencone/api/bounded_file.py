"""A file answer bounded to a size fixed up front, honouring ``Range`` (206), on Starlette's own
range handling (``FileResponse``).

Two callers: a recording in progress (a growing MP4 served up to its last complete fragment) and
a computer's files, which are opened beforehand without following links (drivers/confined.py):
serving them by path again would let a command in the sandbox swap the file for a link in between,
so they are served from the open descriptor. A malformed or unsatisfiable range is a JSON problem
like every other error, not Starlette's plain text.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from starlette.responses import FileResponse, JSONResponse, MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from opencone.api.errors import problem


class BoundedFile(FileResponse):
    """``size`` bytes of the file at ``path``, or of the open descriptor ``fd`` (which the answer
    then owns and closes), even if the file grows meanwhile."""

    def __init__(self, path: Path | str, size: int, *, media_type: str, headers: dict[str, str],
                 fd: int | None = None) -> None:
        st = os.fstat(fd) if fd is not None else os.stat(path)
        fixed = os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, size,
                                int(st.st_atime), int(st.st_mtime), int(st.st_ctime)))
        super().__init__(path, media_type=media_type, stat_result=fixed, headers=headers)
        self._size = size
        self._fd = fd

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            problem = self._range_problem(scope)
            if problem is not None:
                await problem(scope, receive, send)
                return
            await super().__call__(scope, receive, send)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _range_problem(self, scope: Scope) -> JSONResponse | None:
        """The JSON answer for a range Starlette would refuse in plain text, else None."""
        http_range = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"range"), None)
        if http_range is None:
            return None
        try:
            self._parse_range_header(http_range, self._size)
        except MalformedRangeHeader as exc:
            return problem(400, f"Range header: {exc.content}; give bytes=START-END, bytes=START- or "
                                "bytes=-SUFFIX")
        except RangeNotSatisfiable:
            return problem(416, f"the range is outside the file's {self._size} bytes",
                           headers={"content-range": f"bytes */{self._size}"})
        return None

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        if self._fd is None:
            async with super()._open_file() as file:
                yield file
            return
        file = anyio.wrap_file(os.fdopen(os.dup(self._fd), "rb"))
        try:
            yield file
        finally:
            with anyio.CancelScope(shield=True):
                await file.aclose()

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        # never ``pathsend``: the server would open the path again, and send all of it
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if send_header_only:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        async with self._open_file() as file:
            await file.seek(0)  # (a descriptor's dup shares its offset)
            left = self._size
            while True:
                chunk = await file.read(min(self.chunk_size, left)) if left > 0 else b""
                left -= len(chunk)
                more = bool(chunk) and left > 0
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    return
