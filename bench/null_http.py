"""A null HTTP server for the benchmarks: every request gets the same small Lightcone
``ActionResult`` at once, with no routing, auth or work. An SDK call to it is the least
any server could cost that call: the SDK, httpx and loopback TCP alone.

    python bench/null_http.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import cast

import uvloop

BODY = json.dumps({"status": "success", "error_message": None, "result": {}, "timestamp": "2026-01-01T00:00:00Z",
                   "request_id": "req_null", "executed_tab_id": None}).encode()
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)


class NullHttp(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.buffer = cast(asyncio.Transport, transport), b""  # (uvloop's own class)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:  # one answer per whole request (headers and body)
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.transport.write(RESPONSE)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(NullHttp, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
