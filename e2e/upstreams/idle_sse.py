"""An MCP server that only holds streams open: a POST (initialize) is answered with a session id
(`idle-1`); every GET with the headers of an SSE stream and one comment, then nothing (a
keep-alive comment every 15 s) until the client goes away. Stands in for the MCP server in e2e/tests/test_idle_streams.py, where what matters
is how many streams stay open through Envoy, not what they carry.

    python e2e/upstreams/idle_sse.py --port 8082
"""

from __future__ import annotations

import argparse
import asyncio


async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or 0)
        body = await reader.readexactly(length) if length else b""
        if head.startswith(b"POST"):
            # initialize (or any message): a JSON answer naming a session, as a stateful
            # Streamable HTTP server does, so the client's GET streams belong to a session.
            answer = b'{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},' \
                     b'"serverInfo":{"name":"idle","version":"1"}}}' if body else b""
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: idle-1\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        while True:
            event = b": open\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            # Returns when the client (Envoy) closes the connection.
            try:
                await asyncio.wait_for(reader.read(1), timeout=15)
                return
            except asyncio.TimeoutError:
                continue
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        return
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve_one, "127.0.0.1", port, backlog=4096)
    print(f"idle sse server on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8082)
    asyncio.run(main(parser.parse_args().port))
