"""What the hand-written test upstreams (llm_upstream.py, mcp_raw.py, slow_stream.py) share:
reading a request body as sent (content-length or chunked), and serving a handler class on a
port from the command line.
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, de-chunked when it came chunked (Envoy re-frames some bodies so)."""
    if handler.headers.get("transfer-encoding", "").lower() == "chunked":
        data = b""
        while True:
            size = int(handler.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                handler.rfile.readline()
                return data
            data += handler.rfile.read(size)
            handler.rfile.readline()
    length = int(handler.headers.get("content-length") or 0)
    return handler.rfile.read(length) if length else b""


def serve(handler: type[BaseHTTPRequestHandler], description: str, default_port: int, what: str) -> None:
    """Parses --host/--port and serves `handler` until interrupted."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    print(f"{what} listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
