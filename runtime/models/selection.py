"""Which GGUF file(s) of a Hub repository a reference means.

`owner/repo:TAG` matches TAG against file names case-insensitively, as a whole name part
(`Q4_K` does not match `Q4_K_M`); no tag means Q4_K_M, else the only or first GGUF, as
`llama-cli -hf` does. A split model (`name-00001-of-00003.gguf`) counts as one model made of all
its parts. Pure functions over the repository listing: no network, no files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import AmbiguousModelError, HubFileNotFoundError
from .refs import HubRef

DEFAULT_QUANT = "Q4_K_M"
_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# A name part: preceded by the start or a separator, followed by the end, "-" or "." ("_" is
# inside quant names, so it cannot end one).
_BEFORE, _AFTER = r"(?:^|(?<=[-._/]))", r"(?=$|[-.])"
_QUANT_NAME = re.compile(
    _BEFORE + r"((?:UD-)?(?:I?Q\d(?:_[A-Z0-9]+)*|B?F16|F32|TQ\d_\d|MXFP4(?:_MOE)?))" + _AFTER,
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RemoteFile:
    """A file in a Hub repository, as the Hub lists it."""

    path: str
    size: int
    sha256: str | None = None  # the LFS object id: what the download is checked against
    git_oid: str | None = None  # the git blob sha1, for the rare GGUF stored outside LFS


@dataclass(frozen=True)
class Choice:
    """The files that make one model (the first is the one to load) and why they were chosen."""

    files: tuple[RemoteFile, ...]
    note: str | None = None

    @property
    def primary(self) -> RemoteFile:
        return self.files[0]


def split_part(path: str) -> tuple[str, int, int] | None:
    """('dir/name', part, count) for 'dir/name-00002-of-00003.gguf', else None."""
    m = _SPLIT.match(path)
    if not m or not 1 <= int(m["part"]) <= int(m["count"]):
        return None
    return m["prefix"], int(m["part"]), int(m["count"])


def quant_label(path: str) -> str | None:
    """The quantization named in a file name ('Q4_K_M'), or None."""
    name = path.rsplit("/", 1)[-1]
    parts = split_part(name)
    stem = parts[0] if parts else re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    found = _QUANT_NAME.findall(stem)
    return found[-1].upper() if found else None


def models_in(files: list[RemoteFile]) -> list[tuple[RemoteFile, ...]]:
    """GGUF models in a listing: single files and complete split groups, in name order.
    Multimodal projector files (mmproj) are not models on their own."""
    singles: list[tuple[RemoteFile, ...]] = []
    groups: dict[tuple[str, int], dict[int, RemoteFile]] = {}
    for f in files:
        if not f.path.lower().endswith(".gguf") or "mmproj" in f.path.lower():
            continue
        parts = split_part(f.path)
        if parts is None:
            singles.append((f,))
        else:
            groups.setdefault((parts[0], parts[2]), {})[parts[1]] = f
    for (_, count), found in groups.items():
        if len(found) == count:  # an incomplete split model cannot be loaded
            singles.append(tuple(found[i] for i in range(1, count + 1)))
    return sorted(singles, key=lambda m: m[0].path)


def describe(model: tuple[RemoteFile, ...]) -> str:
    """How a candidate is named in messages: its quant, else its file name."""
    label = quant_label(model[0].path) or model[0].path
    return f"{label} ({len(model)} parts)" if len(model) > 1 else label


def matches_tag(path: str, tag: str) -> bool:
    return re.search(_BEFORE + re.escape(tag) + _AFTER, path, re.IGNORECASE) is not None


def choose(files: list[RemoteFile], ref: HubRef) -> Choice:
    """The model a reference names in a repository listing; raise HubFileNotFoundError or
    AmbiguousModelError (both list what exists)."""
    models = models_in(files)
    available = list(dict.fromkeys(describe(m) for m in models))
    if ref.filename:
        for m in models:
            if any(f.path == ref.filename for f in m):
                return Choice(m)
        raise HubFileNotFoundError(ref.repo, ref.filename, [m[0].path for m in models])
    if ref.quant:
        matched = [m for m in models if matches_tag(m[0].path, ref.quant)]
        if not matched:
            raise HubFileNotFoundError(ref.repo, ref.quant, available)
        if len(matched) > 1:
            raise AmbiguousModelError(ref.repo, ref.quant, [m[0].path for m in matched])
        return Choice(matched[0])
    if not models:
        raise HubFileNotFoundError(ref.repo, "*.gguf", [])
    default = [m for m in models if matches_tag(m[0].path, DEFAULT_QUANT)]
    if default:
        return Choice(
            default[0], f"no quant tag given: using {DEFAULT_QUANT} ({default[0][0].path})"
        )
    if len(models) == 1:
        return Choice(models[0], f"using the repository's only GGUF model ({models[0][0].path})")
    return Choice(
        models[0],
        f"no quant tag and no {DEFAULT_QUANT} file: using {models[0][0].path} "
        f"(available: {', '.join(available)})",
    )
