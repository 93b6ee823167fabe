"""How many drafted tokens are worth verifying, from what this run has measured.

Speculative decoding pays only where verifying m tokens in one decode costs less than m decodes
of one. On a GPU a decode of 8 tokens costs about what one does, so every plausible draft pays.
On a small CPU it does not (2 cores, SmolLM2-135M, benchmarks/README.md: a decode of 2 tokens
costs 2.0x one, 4 tokens 3.3x, 17 tokens 11x): there a short or doubtful draft makes generation
slower than plain decoding, and a draft model that costs as much as the target never pays.

So each step weighs the drafter's proposal against plain decoding with two running estimates:
c(m), the seconds of a verification step of m tokens (measured on every step; a plain step is
m = 1), and A(d), how many tokens of a proposal of length d were accepted. A proposal is cut to
the length d' that promises the most tokens per second, (1 + min(d', A(d))) / c(d' + 1), and
dropped for a plain step when none beats 1 / c(1). Unmeasured costs are interpolated from the
measured ones, optimistically (as cheap as c(1)) while none is, so that each length is tried;
unmeasured acceptance is taken as all accepted. Output never depends on this: it only chooses
which drafts are verified.
"""

from __future__ import annotations

import bisect

ALPHA = 0.3  # weight of a new measurement in the running averages


class DraftPolicy:
    def __init__(self, k_max: int, adaptive: bool = True) -> None:
        self.k_max, self.adaptive = k_max, adaptive
        self._cost: list[float | None] = [None] * (k_max + 2)  # index m: seconds of m tokens
        self._accepted: list[float | None] = [None] * (k_max + 1)  # index d: tokens accepted
        self._draft_s: float | None = None  # seconds the drafter takes per proposed token
        self._table: list[float] | None = None  # cost(m) for every m, from self._cost

    # --- measurements ---------------------------------------------------------------------
    def record_step(self, tokens: int, seconds: float) -> None:
        """A verification decode of `tokens` tokens (1 = a plain step) took `seconds`."""
        self._cost[tokens] = _average(self._cost[tokens], seconds)
        self._table = None

    def record_draft(self, proposed: int, verified: int, accepted: int, seconds: float) -> None:
        """The drafter proposed `proposed` tokens in `seconds`; the first `verified` of them were
        verified and `accepted` of those accepted."""
        if proposed:
            self._draft_s = _average(self._draft_s, seconds / proposed)
        if not verified:
            return
        # The count is exact unless the cut hid it: every verified token accepted after a cut
        # only says "at least that many". Then move towards all of them, so that a cut made
        # after a run of rejections grows back once the text copies again.
        hidden = accepted == verified < proposed
        seen = float(proposed if hidden else accepted)
        self._accepted[proposed] = _average(self._accepted[proposed], seen)

    # --- decisions --------------------------------------------------------------------------
    def worth_drafting(self) -> bool:
        """Whether any draft, fully accepted, could beat a plain step: if not, do not even ask
        the drafter (a draft model's proposal costs decodes of its own)."""
        if not self.adaptive or self._cost[1] is None:
            return True
        draft_s, plain = self._draft_s or 0.0, 1.0 / self._cost[1]
        return any(
            (1 + d) / (self.cost(d + 1) + d * draft_s) > plain for d in range(1, self.k_max + 1)
        )

    def choose(self, proposed: int) -> int:
        """How many of `proposed` drafted tokens to verify (0: a plain step)."""
        if not self.adaptive or proposed == 0:
            return proposed
        c1 = self._cost[1]
        if c1 is None:
            return 0  # measure a plain step first: everything is judged against it
        expected = self._accepted[proposed]
        accepted = float(proposed) if expected is None else expected
        best, best_rate = 0, 1.0 / c1
        for d in range(1, proposed + 1):
            rate = (1 + min(d, accepted)) / self.cost(d + 1)
            if rate > best_rate:
                best, best_rate = d, rate
        return best

    def cost(self, m: int) -> float:
        """c(m): measured, else interpolated between measured neighbours, else extended along
        the last two measured points (never below c(1)), else c(1)."""
        if self._table is None:  # rebuilt once per step, after a new measurement
            self._table = [self._estimate(i) for i in range(len(self._cost))]
        return self._table[m]

    def _estimate(self, m: int) -> float:
        known = [(i, c) for i, c in enumerate(self._cost) if c is not None]
        exact = self._cost[m]
        if exact is not None or not known:
            return exact or 0.0
        at = bisect.bisect(known, (m,))  # known[:at] lie below m, known[at:] above
        below, above = known[:at], known[at:]
        if below and above:
            (i0, c0), (i1, c1) = below[-1], above[0]
            return c0 + (c1 - c0) * (m - i0) / (i1 - i0)
        if len(below) >= 2:
            (i0, c0), (i1, c1) = below[-2], below[-1]
            return max(c1 + max(0.0, (c1 - c0) / (i1 - i0)) * (m - i1), known[0][1])
        return known[0][1] if not above else above[0][1]


def _average(old: float | None, new: float) -> float:
    return new if old is None else old + ALPHA * (new - old)
