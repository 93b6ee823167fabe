"""Small media files, the one home of their builders (the doors' tests and the vision tests
alike): a real PNG (zlib, CRCs), a JPEG header and a WAV that runtime/media.check accepts and
libmtmd decodes, and the bad ones it must refuse."""

from __future__ import annotations

import base64
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int = 2, height: int = 2, seed: int = 0) -> bytes:
    """A valid RGB PNG of random pixels drawn from `seed` (different seed, different image)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width * 3), dtype=np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def png_claiming(width: int, height: int) -> bytes:
    """A few bytes whose header claims `width` x `height` pixels: a decompression bomb."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b"")


def jpeg_header(width: int = 4, height: int = 3) -> bytes:
    """SOI, APP0 (JFIF) and a baseline frame header: what the header check reads."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def wav(seconds: float = 0.01, hz: float = 0.0, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV of a sine tone (`hz` 0: silence)."""
    t = np.arange(int(seconds * rate)) / rate
    data = (np.sin(2 * np.pi * hz * t) * 12000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data"
    body += struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


HTML = b"<!DOCTYPE html><html><body>not a picture</body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'


@contextmanager
def web_server(files: dict[str, bytes]) -> Iterator[str]:
    """A loopback web server answering GET /path with `files[path]` (else 404): image URLs for
    --allow-image-urls. Yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
