"""The adaptive draft policy (runtime/generation/draft_policy.py), with made-up timings: which
drafts are verified given what a step of m tokens costs and how many drafted tokens were
accepted."""

from __future__ import annotations

import pytest

from infer.runtime.generation.draft_policy import DraftPolicy

MS = 0.001


def measured(costs: dict[int, float], k_max: int = 16) -> DraftPolicy:
    policy = DraftPolicy(k_max)
    for m, seconds in costs.items():
        policy.record_step(m, seconds)
    return policy


def test_a_plain_step_is_measured_first_then_unmeasured_drafts_are_tried() -> None:
    policy = DraftPolicy(16)
    assert policy.choose(5) == 0  # nothing to compare a draft with yet
    assert policy.worth_drafting()
    policy.record_step(1, 10 * MS)
    assert policy.choose(5) == 5  # optimistic: as cheap as one token, all accepted
    assert policy.choose(0) == 0


def test_where_a_step_costs_what_its_tokens_cost_alone_no_draft_pays() -> None:
    """A small CPU: m tokens cost m times one (2 cores, SmolLM2: 2 tokens cost 2.0x)."""
    policy = measured({m: m * 10 * MS for m in range(1, 18)})
    assert [policy.choose(d) for d in (1, 4, 16)] == [0, 0, 0]
    assert not policy.worth_drafting()


def test_where_a_step_costs_about_one_token_every_draft_pays() -> None:
    """A GPU: 17 tokens cost about what one does."""
    policy = measured({1: 10 * MS, 17: 11 * MS})
    assert policy.choose(16) == 16
    policy.record_draft(16, 16, 3, 0.0)
    assert policy.choose(16) == 3  # the same 3 accepted tokens, for less
    assert policy.worth_drafting()


def test_a_draft_is_cut_to_what_its_accepted_tokens_justify() -> None:
    policy = measured({1: 10 * MS, 3: 14 * MS, 9: 26 * MS})  # 2 ms per extra token
    assert policy.choose(8) == 8  # unmeasured acceptance: all of it
    policy.record_draft(8, 8, 2, 0.0)  # proposals of 8 tokens: 2 accepted
    # (1 + 2) / c(3) = 214 tok/s beats (1 + 1) / c(2) = 167, 3 / c(9) = 115 and 1 / c(1) = 100
    assert policy.choose(8) == 2
    assert policy.choose(1) == 1  # other lengths keep their own record


def test_a_cut_grows_back_when_everything_in_it_is_accepted() -> None:
    policy = measured({1: 10 * MS, 3: 14 * MS, 9: 26 * MS})
    for _ in range(5):
        policy.record_draft(8, 8, 2, 0.0)
    assert policy.choose(8) == 2
    cuts = []
    for _ in range(12):  # the text copies again: each cut is accepted whole
        cut = policy.choose(8)
        policy.record_draft(8, cut, cut, 0.0)
        cuts.append(cut)
    assert cuts[0] == 2 and cuts[-1] == 8 and cuts == sorted(cuts)
    policy.record_draft(8, 8, 1, 0.0)  # a rejection inside: an exact count, the cut shrinks
    assert policy.choose(8) < 8


def test_drafting_stops_when_the_drafter_costs_more_than_it_saves() -> None:
    """A draft model as slow as the target: even all accepted, drafting loses."""
    policy = measured({1: 10 * MS, 5: 14 * MS})
    assert policy.worth_drafting()
    policy.record_draft(4, 4, 4, 40 * MS)
    assert not policy.worth_drafting()


@pytest.mark.parametrize(
    ("m", "expected_ms"),
    [(1, 10.0), (3, 15.0), (5, 20.0), (9, 30.0), (2, 12.5), (7, 25.0)],
)
def test_costs_between_and_beyond_measurements(m: int, expected_ms: float) -> None:
    policy = measured({1: 10 * MS, 5: 20 * MS})
    assert policy.cost(m) == pytest.approx(expected_ms * MS)


def test_not_adaptive_verifies_every_draft() -> None:
    policy = DraftPolicy(16, adaptive=False)
    assert policy.choose(7) == 7
    for m in range(1, 18):
        policy.record_step(m, m * 10 * MS)
    assert policy.choose(7) == 7 and policy.worth_drafting()
