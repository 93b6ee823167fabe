"""A loopback fake of the Hugging Face Hub, driven through the real huggingface_hub client
(HF_ENDPOINT=hub.url). It serves the endpoints the client calls, as huggingface.co answers them:

    GET  /api/models/{repo}[/revision/{rev}]      model info; ?blobs=true adds sizes and LFS sha256
    GET  /api/models/{repo}/tree/{rev}[/{path}]   file listing with lfs.oid
    POST /api/models/{repo}/paths-info/{rev}      the same for named paths
    HEAD/GET /{repo}/resolve/{rev}/{file}         ETag / X-Linked-Etag = sha256, X-Repo-Commit,
                                                  Content-Length, Range requests (206)

Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) as the real
Hub's do, so the client raises its own typed errors. Knobs: `tamper` (serve flipped bytes),
`drop_at` / `drop_once` (close the connection at a byte offset), `gated` repos (401 without the
right token), `down` (drop every connection), `throttle` (slow transfers). Every request is
logged in `requests`.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from .tiny_gguf import write_tiny_gguf

if TYPE_CHECKING:
    import pytest

TOKEN = "hf_fake_token"


@dataclass
class FakeRepo:
    name: str
    files: dict[str, bytes]
    commit: str
    gated: bool = False
    license: str | None = None
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Request] = []
        self.tamper: set[str] = set()
        self.drop_at: dict[str, int] = {}  # file -> offset where every transfer dies
        self.drop_once: dict[str, int] = {}  # file -> offset where the next transfer dies
        self.down = False
        self.throttle = 0.0  # seconds to wait after each MiB sent: makes transfers overlap
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_repo(
        self, repo: str, files: dict[str, bytes], *, gated: bool = False, license: str | None = None
    ) -> FakeRepo:
        digest = hashlib.sha1(repo.encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        entry = FakeRepo(repo, dict(files), digest.hexdigest(), gated, license)
        entry.branches["main"] = entry.commit
        self.repos[repo] = entry
        return entry

    def sha256(self, repo: str, path: str) -> str:
        return hashlib.sha256(self.repos[repo].files[path]).hexdigest()

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self.lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method) and contains in r.path
            )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-transfer (tests cut downloads and time out on purpose) is
        # not the hub's error; printed, it lands in whichever test captures stderr next.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.hub = hub
    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    # --- routing -------------------------------------------------------------------------
    def _route(self, method: str) -> None:
        hub = self.hub
        with hub.lock:
            hub.requests.append(
                Request(method, self.path, {k.lower(): v for k, v in self.headers.items()})
            )
        if hub.down:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            self._api(method, parts[2] + "/" + parts[3], parts[4:], parse_qs(url.query))
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(method, parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]))
        else:
            self._error(404, None, "not found")

    def _repo(self, name: str, rev: str | None) -> tuple[FakeRepo, str] | None:
        # Repository names are case-insensitive on the Hub.
        repo = next((r for n, r in self.hub.repos.items() if n.lower() == name.lower()), None)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository Not Found for {name}")
            return None
        rev = rev or "main"
        commit = repo.branches.get(rev) or (rev if rev == repo.commit else None)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, commit

    def _api(self, method: str, name: str, rest: list[str], query: dict[str, list[str]]) -> None:
        if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
            self._paths_info(name, rest[1])
            return
        if rest and rest[0] == "tree" and len(rest) >= 2:
            self._tree(name, rest[1], "/".join(rest[2:]))
            return
        found = self._repo(name, rest[1] if rest[:1] == ["revision"] and len(rest) == 2 else None)
        if found is None:
            return
        repo, commit = found
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        body = {
            "_id": commit[:24],
            "id": repo.name,
            "modelId": repo.name,
            "sha": commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": ["gguf"],
            "cardData": {"license": repo.license} if repo.license else None,
            "siblings": [self._sibling(p, d, blobs) for p, d in sorted(repo.files.items())],
        }
        self._json(body)

    @staticmethod
    def _sibling(path: str, data: bytes, blobs: bool) -> dict[str, Any]:
        if not blobs:
            return {"rfilename": path}
        sha = hashlib.sha256(data).hexdigest()
        return {
            "rfilename": path,
            "blobId": hashlib.sha1(data).hexdigest(),
            "size": len(data),
            "lfs": {"sha256": sha, "size": len(data), "pointerSize": 134},
        }

    @staticmethod
    def _entry(path: str, data: bytes) -> dict[str, Any]:
        sha = hashlib.sha256(data).hexdigest()
        return {
            "type": "file",
            "oid": hashlib.sha1(data).hexdigest(),
            "size": len(data),
            "path": path,
            "lfs": {"oid": sha, "size": len(data), "pointerSize": 134},
        }

    def _tree(self, name: str, rev: str, under: str) -> None:
        found = self._repo(name, rev)
        if found is not None:
            prefix = under.rstrip("/") + "/" if under else ""
            files = found[0].files
            self._json(
                [self._entry(p, d) for p, d in sorted(files.items()) if p.startswith(prefix)]
            )

    def _paths_info(self, name: str, rev: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        try:
            wanted = json.loads(raw).get("paths", [])
        except json.JSONDecodeError:
            wanted = parse_qs(raw).get("paths", [])
        found = self._repo(name, rev)
        if found is not None:
            files = found[0].files
            self._json([self._entry(p, files[p]) for p in wanted if p in files])

    # --- file downloads --------------------------------------------------------------------
    def _resolve(self, method: str, name: str, rev: str, path: str) -> None:
        found = self._repo(name, rev)
        if found is None:
            return
        repo, commit = found
        if repo.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._error(401, "GatedRepo", "Access to model is restricted. You must have access.")
            return
        if path not in repo.files:
            self._error(404, "EntryNotFound", f"{path} does not exist on {rev}")
            return
        data = repo.files[path]
        sha = hashlib.sha256(data).hexdigest()
        if path in self.hub.tamper:
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0xFF
            data = bytes(flipped)
        start, end = self._range(len(data))
        partial = "Range" in self.headers
        self.send_response(206 if partial else 200)
        self.send_header("ETag", f'"{sha}"')
        self.send_header("X-Linked-Etag", f'"{sha}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("X-Repo-Commit", commit)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if method == "GET":
            self._body(path, data, start, end)

    def _range(self, size: int) -> tuple[int, int]:
        spec = self.headers.get("Range", "")
        if not spec.startswith("bytes="):
            return 0, size
        first, _, last = spec[len("bytes=") :].partition("-")
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        return start, end

    def _body(self, path: str, data: bytes, start: int, end: int) -> None:
        with self.hub.lock:
            cut = self.hub.drop_once.pop(path, None)
            if cut is None:
                cut = self.hub.drop_at.get(path)
        stop = cut if cut is not None and start <= cut < end else end
        view = memoryview(data)
        for pos in range(start, stop, 1 << 20):
            self.wfile.write(view[pos : min(pos + (1 << 20), stop)])
            if self.hub.throttle:
                time.sleep(self.hub.throttle)
        if stop < end:  # the connection dies mid-file
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    # --- replies -------------------------------------------------------------------------
    def _json(self, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _error(self, status: int, code: str | None, message: str) -> None:
        raw = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


# --- GGUF files for the fake repositories --------------------------------------------------
_TMP = Path(tempfile.mkdtemp(prefix="infer-fake-hub-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@functools.cache
def tiny_gguf(seed: int = 0) -> bytes:
    """A valid tiny llama GGUF with a chat template (different bytes per seed)."""
    return write_tiny_gguf(_TMP / f"tiny-{seed}.gguf", seed=seed).read_bytes()


@functools.cache
def split_gguf(seed: int = 0) -> tuple[bytes, ...]:
    """The tiny model written as three split files (name-0000N-of-00003.gguf)."""
    import gguf

    class SplitWriter(gguf.GGUFWriter):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **{"split_max_tensors": 10, **kw})

    out = _TMP / f"split-{seed}"
    out.mkdir(exist_ok=True)
    original = gguf.GGUFWriter
    gguf.GGUFWriter = SplitWriter  # type: ignore[misc]
    try:
        write_tiny_gguf(out / "tiny.gguf", seed=seed)
    finally:
        gguf.GGUFWriter = original  # type: ignore[misc]
    return tuple(p.read_bytes() for p in sorted(out.glob("tiny-*-of-*.gguf")))


def point_env_at(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The environment pointed at `hub` for the test (`monkeypatch`'s): online, no
    token, and huggingface_hub's import-time globals set so that no telemetry request goes out
    and no real saved token is read."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", hf_constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
