"""The fakes stand in for the backend Protocols (runtime/llama/interface.py): every member a
Protocol declares is there, and each method takes the same parameters. (mypy does not see the
tests' `infer.*` imports through the editable install, so this is checked here.)"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from infer.runtime.llama import interface

from .fakes import FakeContext, FakeModel, FakeSession


def _members(protocol: type) -> dict[str, Any]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n in vars(protocol) if not n.startswith("_")}
    return {n: vars(protocol).get(n) for n in names}


def _parameters(function: Any) -> list[tuple[str, Any]]:
    params = list(inspect.signature(function).parameters.values())[1:]  # without self
    return [(p.name, p.kind) for p in params]


@pytest.mark.parametrize(
    ("protocol", "fake"),
    [
        (interface.Model, FakeModel()),
        (interface.Context, FakeContext(2, 16, 8)),
        (interface.Session, FakeSession()),
    ],
)
def test_each_fake_has_what_its_protocol_declares(protocol: type, fake: Any) -> None:
    for name, declared in _members(protocol).items():
        assert hasattr(fake, name), f"{type(fake).__name__} lacks {name}"
        if inspect.isfunction(declared):
            mine = getattr(type(fake), name)
            assert _parameters(mine) == _parameters(declared), f"{type(fake).__name__}.{name}"


def test_the_check_sees_a_missing_member() -> None:
    class Partial:
        n_seq_max = 1

    assert "room" in _members(interface.Context)
    assert not hasattr(Partial(), "room")
