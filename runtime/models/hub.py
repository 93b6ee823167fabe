"""Talking to the Hugging Face Hub: list a repository, download one file with its checksum.

Everything goes through huggingface_hub's client (its HTTP session, headers, URL scheme and
error types). Two things are done here rather than by `hf_hub_download`: the sha256 check (the
library only compares sizes, huggingface_hub#2364) and progress reporting without tqdm.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, when it is imported; infer reads the
environment on every call and passes the endpoint and token explicitly, so a changed
environment (tests, long-lived Python callers) is always honoured. The library is imported
inside the functions: `infer --help` and `infer list` never load it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    BadReferenceError,
    ChecksumError,
    DiskFullError,
    GatedRepoError,
    HubError,
    NetworkError,
    RepoNotFoundError,
)
from ..progress import PullProgress
from .refs import check_filename
from .selection import RemoteFile

DEFAULT_ENDPOINT = "https://huggingface.co"
API_TIMEOUT = 30.0
CHUNK = 1 << 20
RETRIES = 3  # attempts in a row that bring no new byte before giving up
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    token: str | None
    offline: bool


def settings(offline: bool | None = None) -> HubSettings:
    """The Hub endpoint, token and offline mode, read from the environment now. `offline`
    (the --offline flag) wins over HF_HUB_OFFLINE when given."""
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if not endpoint.startswith(("https://", "http://")):
        raise HubError(f"HF_ENDPOINT must be an http(s) URL, not '{endpoint}'")
    return HubSettings(endpoint, os.environ.get("HF_TOKEN") or None, offline)


@dataclass(frozen=True)
class RepoListing:
    repo: str
    commit: str  # the revision resolved to a commit: every file is fetched at this commit
    files: list[RemoteFile]
    license: str | None = None


def _go_online(s: HubSettings) -> None:
    """Before a network call: bring huggingface_hub's offline flag, frozen at its import, in
    line with this call's decision (the caller has already refused to go online if offline)."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = s.offline


def _token(s: HubSettings) -> str | bool:
    if s.token:
        return s.token
    from huggingface_hub import get_token

    return get_token() or False  # the token saved by `hf auth login`, if any


def list_repo(s: HubSettings, repo: str, revision: str | None) -> RepoListing:
    """List a repository's files with sizes and LFS sha256 (one API request)."""
    from huggingface_hub import HfApi

    _go_online(s)
    token = _token(s)
    with hub_errors(s, repo, revision, has_token=bool(token)):
        info = HfApi(endpoint=s.endpoint, token=token).model_info(
            repo, revision=revision, files_metadata=True, timeout=API_TIMEOUT
        )
    commit = str(info.sha or "")
    if not _SHA1.match(commit):
        raise HubError(f"the Hub sent an invalid commit id for {repo}: {commit[:80]!r}")
    files = [f for f in (_remote_file(sib) for sib in info.siblings or []) if f is not None]
    canonical = info.id if isinstance(info.id, str) and info.id.lower() == repo.lower() else repo
    card = getattr(info, "card_data", None)
    license_ = getattr(card, "license", None) if card is not None else None
    return RepoListing(canonical, commit, files, license_ if isinstance(license_, str) else None)


def _remote_file(sibling: Any) -> RemoteFile | None:
    """A listed GGUF file, validated: names and digests from a server become paths later
    (Ollama CVE-2024-37032). Anything malformed is left out, as if it were not there."""
    path = sibling.rfilename
    if not isinstance(path, str) or not path.lower().endswith(".gguf"):
        return None
    try:
        check_filename(path)
    except BadReferenceError:
        return None
    lfs = sibling.lfs
    sha256 = lfs.sha256 if lfs is not None else None
    size = lfs.size if lfs is not None else sibling.size
    if not isinstance(size, int) or size < 0:
        return None
    sha256 = sha256 if isinstance(sha256, str) and _SHA256.match(sha256) else None
    oid = (
        sibling.blob_id
        if isinstance(sibling.blob_id, str) and _SHA1.match(sibling.blob_id)
        else None
    )
    return RemoteFile(path, size, sha256, None if lfs is not None else oid)


@contextmanager
def hub_errors(
    s: HubSettings, repo: str, revision: str | None = None, *, has_token: bool = True
) -> Iterator[None]:
    """Turn huggingface_hub's and httpx's exceptions into infer's one-line errors."""
    import httpx2
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.GatedRepoError:  # a subclass of RepositoryNotFoundError: test it first
        raise GatedRepoError(repo) from None
    except hf.RevisionNotFoundError:
        raise RepoNotFoundError(repo, revision or "main") from None
    except hf.RepositoryNotFoundError:
        raise RepoNotFoundError(repo, has_token=has_token) from None
    except hf.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        if status in (401, 403):
            raise GatedRepoError(repo) from None
        raise HubError(f"the Hub answered HTTP {status} for {repo}") from None
    except httpx2.TransportError as e:
        raise NetworkError(s.endpoint, _reason(e)) from None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:120]


class _Transfer:
    """A download into a `.part` file, hashed as it is written, resumable from what an earlier
    attempt (or an interrupted pull) left there."""

    def __init__(self, part: Path, remote: RemoteFile) -> None:
        self.part, self.remote = part, remote
        self._reset()

    def _reset(self) -> None:
        part, remote = self.part, self.remote
        self.sha256 = hashlib.sha256()
        self.git = hashlib.sha1(f"blob {remote.size}\0".encode()) if remote.git_oid else None
        self.done = 0
        if part.exists():
            if part.stat().st_size > remote.size:
                part.unlink()
            else:
                with open(part, "rb") as f:
                    while chunk := f.read(CHUNK):
                        self._hash(chunk)

    def _hash(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        if self.git is not None:
            self.git.update(chunk)
        self.done += len(chunk)

    def restart(self) -> None:
        """The server ignored our Range request: start over."""
        self.part.unlink(missing_ok=True)
        self._reset()

    def write_from(self, chunks: Iterator[bytes], progress: PullProgress) -> None:
        with open(self.part, "ab") as f:
            for chunk in chunks:
                f.write(chunk)
                self._hash(chunk)
                progress.advance(len(chunk))

    def verify(self) -> str:
        """The sha256 of a complete download, checked against the Hub's; a mismatching
        file is deleted."""
        actual = self.sha256.hexdigest()
        expected, got, algo = self.remote.sha256, actual, "sha256"
        if expected is None and self.git is not None:
            expected, got, algo = self.remote.git_oid, self.git.hexdigest(), "git sha1"
        if expected is None:
            self.part.unlink(missing_ok=True)
            raise HubError(f"the Hub published no checksum for {self.remote.path}; not using it")
        if got != expected or self.done != self.remote.size:
            self.part.unlink(missing_ok=True)
            raise ChecksumError(self.remote.path, expected, got, algo)
        return actual


def download(
    s: HubSettings, repo: str, commit: str, remote: RemoteFile, part: Path, progress: PullProgress
) -> str:
    """Download one file into `part` (resuming it if it exists) and verify it; return its
    sha256. On a dropped connection it resumes with a Range request; a download that makes no
    progress RETRIES times in a row raises NetworkError and keeps the part for a later pull."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    _go_online(s)
    url = hf_hub_url(repo, remote.path, revision=commit, endpoint=s.endpoint)
    token = _token(s)
    headers = build_hf_headers(token=token, library_name="infer")
    transfer = _Transfer(part, remote)
    progress.start(remote.path, remote.size, transfer.done)
    stalls = 0
    try:
        with hub_errors(s, repo, commit, has_token=bool(token)):
            while transfer.done < remote.size:
                before = transfer.done
                try:
                    _get(url, headers, transfer, progress)
                except _transport_errors():
                    stalls = 0 if transfer.done > before else stalls + 1
                    if stalls >= RETRIES:
                        raise
                    time.sleep(0.25 * 2**stalls)
                    continue
                if transfer.done == before:
                    raise HubError(f"the Hub sent no data for {remote.path}")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            part.unlink(missing_ok=True)
            free = shutil.disk_usage(part.parent).free
            raise DiskFullError(part.parent, remote.size - transfer.done, free) from None
        raise
    finally:
        progress.finish()
    return transfer.verify()


def _transport_errors() -> tuple[type[BaseException], ...]:
    import httpx2

    return (httpx2.TransportError,)


def _get(url: str, headers: dict[str, str], t: _Transfer, progress: PullProgress) -> None:
    import httpx2
    from huggingface_hub.utils import get_session, hf_raise_for_status

    h = dict(headers)
    if t.done:
        h["Range"] = f"bytes={t.done}-"
    timeout = httpx2.Timeout(60.0, connect=10.0)
    with get_session().stream("GET", url, headers=h, timeout=timeout) as r:
        if r.status_code >= 400:
            r.read()  # the error's message is in the body
            hf_raise_for_status(r)
        start = r.headers.get("Content-Range", "")
        if t.done and not (r.status_code == 206 and start.startswith(f"bytes {t.done}-")):
            t.restart()  # the server sent the whole file (or another range): start over
            progress.start(t.remote.path, t.remote.size, 0)
            if r.status_code != 200:
                return
        t.write_from(r.iter_bytes(), progress)  # as received: a buffer would be lost on a drop
