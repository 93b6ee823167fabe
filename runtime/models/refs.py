"""Model references: what a user types after `infer run`.

    smollm2                       an alias from models.toml
    ./model.gguf  /abs/x.gguf     a local file
    owner/repo[:QUANT][@REV]      a GGUF repository on the Hugging Face Hub
    hf://owner/repo/dir/f.gguf    one exact file in a Hub repository

Every part is validated here, before it comes near a path or a URL (Ollama CVE-2024-37032 turned
an unchecked digest into a path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadReferenceError

_REPO_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_QUANT = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
_FILE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class AliasRef:
    name: str


@dataclass(frozen=True)
class PathRef:
    path: Path


@dataclass(frozen=True)
class HubRef:
    repo: str
    quant: str | None = None
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        if self.filename:
            text = f"hf://{self.repo}/{self.filename}"
        else:
            text = self.repo + (f":{self.quant}" if self.quant else "")
        return text + (f"@{self.revision}" if self.revision else "")


ModelRef = AliasRef | PathRef | HubRef


def looks_like_path(text: str) -> bool:
    return text.startswith(("./", "../", "/", "~", ".\\")) or (
        text.lower().endswith(".gguf") and not text.startswith("hf://")
    )


def parse_ref(text: str) -> ModelRef:
    """Parse and validate a model reference; raise BadReferenceError if it is malformed."""
    if not text or _CONTROL.search(text):
        raise BadReferenceError(f"invalid model reference {text!r}")
    if text.startswith("hf://"):
        return _parse_hub_file(text)
    if looks_like_path(text):
        return PathRef(Path(text).expanduser())
    if "/" in text:
        return _parse_hub_repo(text)
    return AliasRef(text)


def _check_repo(repo: str, original: str) -> str:
    parts = repo.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) and ".." not in p for p in parts):
        raise BadReferenceError(f"invalid Hub repository '{repo}' in '{original}'")
    return repo


def _check_revision(rev: str | None, original: str) -> str | None:
    # A branch name like "refs/pr/1" becomes a path under the cache: no ".", "..", or empty part.
    if rev is not None and (
        not _REVISION.match(rev) or ".." in rev or any(p in ("", ".") for p in rev.split("/"))
    ):
        raise BadReferenceError(f"invalid revision '{rev}' in '{original}'")
    return rev


def check_filename(name: str, original: str | None = None) -> str:
    """A file path inside a repository: relative, no '..', plain characters only."""
    parts = name.split("/")
    if not all(_FILE_PART.match(p) and p not in (".", "..") for p in parts):
        raise BadReferenceError(f"invalid file name '{name}' in '{original or name}'")
    return name


def _parse_hub_repo(text: str) -> HubRef:
    body, _, revision = text.partition("@")
    repo, _, quant = body.partition(":")
    if quant and not _QUANT.match(quant):
        raise BadReferenceError(f"invalid quantization tag '{quant}' in '{text}'")
    return HubRef(
        _check_repo(repo, text), quant or None, _check_revision(revision or None, text), None
    )


def _parse_hub_file(text: str) -> HubRef:
    body, _, revision = text[len("hf://") :].partition("@")
    parts = body.split("/")
    if len(parts) < 3:
        raise BadReferenceError(f"'{text}' must look like hf://owner/repo/file.gguf")
    repo = _check_repo("/".join(parts[:2]), text)
    filename = check_filename("/".join(parts[2:]), text)
    if not filename.lower().endswith(".gguf"):
        raise BadReferenceError(f"'{text}' does not name a .gguf file")
    return HubRef(repo, None, _check_revision(revision or None, text), filename)
