"""GBNF that would overflow llama.cpp's C stack is refused before llama.cpp parses it: its parser,
left-recursion check and stack expansion recurse once per rule, and 30,000 nested groups or a
chain of 100,000 rules crashed it (SIGSEGV, measured on an 8 MB stack). A request's `grammar`
must not end `infer serve`; what llama.cpp can take still works."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from infer.runtime.errors import UsageError
from infer.runtime.llama.grammar import MAX_GRAMMAR_RULES, check_grammar


def nested(n: int) -> str:
    return "root ::= " + "(" * n + '"a"' + ")" * n


def chain(n: int) -> str:
    return "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(n)) + f'r{n} ::= "a"\n'


@pytest.mark.parametrize("text", [nested(30_000), chain(100_000)], ids=["nested", "chain"])
def test_a_grammar_deeper_than_llama_cpp_can_recurse_is_refused(text: str) -> None:
    with pytest.raises(UsageError) as e:
        check_grammar(text, "grammar")
    assert str(e.value).startswith("grammar: the grammar makes") and "at most" in str(e.value)


def test_the_bound_is_what_crashed_llama_cpp_not_less() -> None:
    """Without the check the same text kills the process that parses it (a child here)."""
    code = (
        "import sys\n"
        "import infer.runtime.llama.grammar as g\n"
        "g.MAX_GRAMMAR_RULES = 10**9\n"
        "g.check_grammar(sys.stdin.read())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=nested(30_000).encode(),
        capture_output=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)),  # no core file
    )
    assert done.returncode < 0, done.stderr[-300:]  # a signal, not an error


def test_grammars_within_the_bound_and_literals_of_any_content_pass() -> None:
    assert check_grammar(nested(1000)) and check_grammar(chain(MAX_GRAMMAR_RULES - 10))
    literal = 'root ::= "' + "(" * 20_000 + '" [*+?{]' + " # ((((" * 1000 + "\n"
    assert check_grammar(literal)
