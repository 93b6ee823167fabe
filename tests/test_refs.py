"""Model references: every part is validated before it can become a path or a URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from infer.runtime.errors import BadReferenceError
from infer.runtime.models.refs import AliasRef, HubRef, PathRef, check_filename, parse_ref


@pytest.mark.parametrize("text", ["smollm2", "smollm2:360m", "qwen2.5-coder:1.5b", "Llama3"])
def test_aliases(text: str) -> None:
    assert parse_ref(text) == AliasRef(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("./x.gguf", Path("./x.gguf")),
        ("../models/x.gguf", Path("../models/x.gguf")),
        ("/abs/x.gguf", Path("/abs/x.gguf")),
        ("x.gguf", Path("x.gguf")),
        ("X.GGUF", Path("X.GGUF")),
        ("dir/x.gguf", Path("dir/x.gguf")),  # ends in .gguf: a file, not owner/repo
        ("./model", Path("./model")),  # an explicit ./ is a path whatever the suffix
    ],
)
def test_paths(text: str, expected: Path) -> None:
    assert parse_ref(text) == PathRef(expected)


def test_home_path_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    ref = parse_ref("~/x.gguf")
    assert ref == PathRef(tmp_path / "x.gguf")


@pytest.mark.parametrize(
    ("text", "repo", "quant", "revision"),
    [
        ("owner/repo", "owner/repo", None, None),
        ("owner/repo:Q4_K_M", "owner/repo", "Q4_K_M", None),
        ("owner/repo@rev", "owner/repo", None, "rev"),
        ("owner/repo:Q8_0@main", "owner/repo", "Q8_0", "main"),
        ("owner/repo@refs/pr/1", "owner/repo", None, "refs/pr/1"),
        ("bartowski/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m", "bartowski/Qwen2.5-0.5B-Instruct-GGUF",
         "q4_k_m", None),
    ],
)  # fmt: skip
def test_hub_repos(text: str, repo: str, quant: str | None, revision: str | None) -> None:
    ref = parse_ref(text)
    assert ref == HubRef(repo, quant, revision, None)
    assert str(ref) == text  # round-trips to what the user typed


@pytest.mark.parametrize(
    ("text", "repo", "filename", "revision"),
    [
        ("hf://owner/repo/file.gguf", "owner/repo", "file.gguf", None),
        ("hf://owner/repo/dir/file.gguf", "owner/repo", "dir/file.gguf", None),
        ("hf://owner/repo/dir/file.gguf@v1.0", "owner/repo", "dir/file.gguf", "v1.0"),
        ("hf://o/r/a/b/M-Q4_K_M-00001-of-00002.gguf", "o/r", "a/b/M-Q4_K_M-00001-of-00002.gguf",
         None),
    ],
)  # fmt: skip
def test_hub_files(text: str, repo: str, filename: str, revision: str | None) -> None:
    ref = parse_ref(text)
    assert ref == HubRef(repo, None, revision, filename)
    assert str(ref) == text


@pytest.mark.parametrize(
    "text",
    [
        # traversal or odd parts in an hf:// file path
        "hf://a/b/../../etc/passwd.gguf",
        "hf://a/b/./x.gguf",
        "hf://a/b/dir/../x.gguf",
        "hf://a/b//etc/passwd.gguf",
        "hf://a/b/.hidden.gguf",
        "hf://a/b/dir\\..\\x.gguf",
        # '..' or odd characters in the repository
        "hf://../b/x.gguf",
        "hf://a/../x.gguf",
        "owner/..",
        "owner/re..po",
        "..owner/repo:Q4_0",
        "owner/.repo",
        "owner/repo-",
        "own er/repo",
        "owner/rep%2fo",
        # absolute-looking parts
        "hf:///etc/passwd.gguf",
        "hf://a//b/x.gguf",
        # control characters anywhere
        "smoll\x00m2",
        "owner/repo\n",
        "owner/repo:Q4\x1b[31m",
        "./x\x00.gguf",
        "hf://a/b/x.gguf\r",
        "\x7f",
        # empty
        "",
        # too long
        "owner/" + "r" * 97,
        "o" * 97 + "/repo",
        # bad quantization tags
        "owner/repo:Q4/../x",
        "owner/repo:Q4 K",
        "owner/repo:Q4-K",
        "owner/repo:" + "Q" * 33,
        # bad revisions
        "owner/repo@..",
        "owner/repo@a/../../b",
        "owner/repo@a/./b",
        "owner/repo@a//b",
        "owner/repo@main/",
        "owner/repo@-rf",
        "owner/repo@/etc",
        "owner/repo@" + "r" * 300,
        "hf://a/b/x.gguf@../x",
        # hf:// without a file, or not to a .gguf
        "hf://a/b",
        "hf://a/b/",
        "hf://a",
        "hf://",
        "hf://a/b/README.md",
        "hf://a/b/x.gguf.exe",
        # not owner/repo
        "a/b/c",
        "a/b/c:Q4_0",
        "a/",
    ],
)
def test_rejected(text: str) -> None:
    with pytest.raises(BadReferenceError):
        parse_ref(text)


@pytest.mark.parametrize("text", ["../repo", "/owner/repo:Q4", "/"])
def test_leading_slash_or_dotdot_is_a_local_path_not_a_repo(text: str) -> None:
    """The user's own file system is theirs to name; only Hub parts become cache paths."""
    assert parse_ref(text) == PathRef(Path(text))


def test_error_names_the_bad_part() -> None:
    with pytest.raises(BadReferenceError, match=r"quantization tag 'Q4/\.\./x'"):
        parse_ref("owner/repo:Q4/../x")
    with pytest.raises(BadReferenceError, match=r"revision 'a/\.\./b'"):
        parse_ref("owner/repo@a/../b")
    with pytest.raises(BadReferenceError, match=r"does not name a \.gguf file"):
        parse_ref("hf://a/b/config.json")


@pytest.mark.parametrize("name", ["x.gguf", "dir/x.gguf", "a_b+c-1.2.gguf"])
def test_check_filename_accepts_plain_relative_paths(name: str) -> None:
    assert check_filename(name) == name


@pytest.mark.parametrize("name", ["", "/x.gguf", "../x.gguf", "a/../x", "a/./x", "a b", "a\\b"])
def test_check_filename_rejects(name: str) -> None:
    with pytest.raises(BadReferenceError):
        check_filename(name)
