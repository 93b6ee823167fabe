"""Speculative decoding: `--draft lookup` against plain decoding on a copy-heavy task.

    python benchmarks/speculative.py [--rounds 4] [--threads 2] [--draft-max 10] [--ngram 3]
                                     [--variants full,full-always,paragraph,paragraph-always]
                                     [--max-tokens N] [--sweep 8,24,32] [--json FILE]

Variants: the whole story or its first paragraph (a ~100-token answer), each with infer's
adaptive drafting (the default) and as `--draft-always` (every draft verified).

The task: "Return this text with the typos fixed" over a ~500-token story with a typo in about
every ninth word (fixed seed), through SmolLM2's chat template, greedy (temperature 0). The answer
is capped at the token length of the clean story, which is what a correct answer would take.

One model is loaded once, in this process; each round runs both sides back to back (plain, then
drafted; the order alternates between rounds so drift on the shared machine affects both alike)
and checks that the two answers are identical. Generation tok/s is infer's own figure
(Stats.generate_tps: decode steps after the first token / time), prompt evaluation excluded.
Every sample waits for an idle machine and is retaken when other processes interfered (common.py).

Then it times the verification batch itself (`--no-curve` skips it): llama_decode of m tokens with
logits at every position, for m = 1 .. 17, after 500 and after 100 tokens of context. That cost,
against a single-token decode, bounds what any drafter can gain on a given machine (see
benchmarks/README.md). `--sweep` also compares other --draft-max values (full story, adaptive).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from typing import Any

from common import add_json_arg, machine, measure, write_results

STORY = """The old lighthouse stood at the edge of the cliff for more than a hundred years. \
Every night its lamp turned slowly, sending a beam of light across the dark water so that ships \
could find their way into the harbour. The keeper, a quiet man named Thomas, lived in a small \
stone cottage beside the tower. He climbed the narrow stairs three times each evening to wind \
the clockwork, trim the wick and polish the great glass lens until it shone.

In the winter the storms were terrible. Waves crashed against the rocks below, and the wind \
howled around the tower as if it wanted to tear it from the ground. On those nights Thomas did \
not sleep at all. He sat by the window with a cup of tea and watched the sea, ready to ring the \
bell if a ship came too close to the shore. The people of the village said that he had saved \
more than forty lives, although he never spoke about it himself.

When the government decided to replace the lamp with an automatic light, many people in the \
village were sad. They wrote letters to the newspaper and asked the council to keep the keeper in \
his post. The council listened politely, but in the end the decision was made far away in the \
capital, by people who had never seen the lighthouse or met the man who cared for it.

Thomas accepted the news calmly. On his last night he climbed the stairs one final time, wound \
the clockwork and lit the lamp. Then he sat down on the top step and watched the beam sweep \
across the water until the sun came up. In the morning he packed his few belongings into a \
wooden box, locked the door of the cottage and walked down the hill to the village, where his \
sister had prepared a room for him.

The automatic light still turns every night. It is brighter than the old lamp and it never \
needs to be wound or polished. But the older fishermen say that the sea feels emptier now, and \
on stormy nights some of them still look up at the tower, half expecting to see a figure \
standing at the window, watching over them."""
INSTRUCTION = "Return this text with the typos fixed. Do not change anything else.\n\n"
# variant -> (paragraphs, 0 = all; every draft verified, as --draft-always)
VARIANTS = {
    "full": (0, False),
    "full-always": (0, True),
    "paragraph": (1, False),
    "paragraph-always": (1, True),
}


def with_typos(text: str, every: int = 9, seed: int = 7) -> str:
    """Swap two inner letters of every `every`-th word (words of 4+ letters only)."""
    rng = random.Random(seed)
    words = text.split(" ")
    for i, word in enumerate(words):
        core = word.strip(".,\n")
        if i % every == 4 and len(core) > 3 and core.isalpha():
            j = rng.randrange(1, len(core) - 2)
            swapped = core[:j] + core[j + 1] + core[j] + core[j + 2 :]
            words[i] = word.replace(core, swapped, 1)
    return " ".join(words)


def story(args: argparse.Namespace) -> str:
    """The whole story, or its first --paragraphs paragraphs (a shorter task)."""
    return "\n\n".join(STORY.split("\n\n")[: args.paragraphs or None])


def load_engine(threads: int) -> Any:
    from infer.runtime import LoadOptions, load

    return load("smollm2", LoadOptions(ctx_size=2048, threads=threads)).new_session()


def one_run(engine: Any, draft: str | None, args: argparse.Namespace, n: int) -> Any:
    from infer.runtime import GenerateOptions, Message, SamplingParams, generate

    options = GenerateOptions(
        max_tokens=n, draft_max=args.draft_max, draft_ngram=args.ngram, draft_adapt=not args.always
    )
    prompt = INSTRUCTION + with_typos(story(args))
    # From an empty KV cache each time: both sides then evaluate the prompt alike (llama.cpp's
    # results depend slightly on how tokens are batched, see benchmarks/README.md).
    engine.reset()
    gen = generate(
        engine, [Message("user", prompt)], SamplingParams(temperature=0), options, drafter=draft
    )
    for _ in gen:
        pass
    return gen


def compare(engine: Any, args: argparse.Namespace, n: int) -> dict[str, Any]:
    plain_tps, draft_tps, ratios, drafted, accepted = [], [], [], 0, 0
    identical, divergence = True, []
    for r in range(args.rounds):
        order = [None, "lookup"] if r % 2 == 0 else ["lookup", None]
        runs = {str(d): measure(lambda d=d: one_run(engine, d, args, n)) for d in order}
        plain, drafted_run = runs["None"].value, runs["lookup"].value
        same = plain.text == drafted_run.text
        identical &= same
        if not same:
            at = len(os.path.commonprefix([plain.text, drafted_run.text]))  # noqa: RUF071
            divergence.append(at)
        p, d = plain.stats.generate_tps, drafted_run.stats.generate_tps
        plain_tps.append(p)
        draft_tps.append(d)
        ratios.append(d / p)
        drafted += drafted_run.stats.drafted
        accepted += drafted_run.stats.accepted
        print(
            f"  round {r + 1}: plain {p:6.1f} tok/s  lookup {d:6.1f} tok/s  x{d / p:.2f}  "
            f"accepted {drafted_run.stats.accepted}/{drafted_run.stats.drafted}  "
            f"same text: {same if same else f'no, from character {divergence[-1]}'}  "
            f"(others' CPU {max(s.interference for s in runs.values()):.0%})",
            file=sys.stderr,
        )
    return {
        "draft_max": args.draft_max, "ngram": args.ngram, "generated_tokens": n,
        "plain_tps": plain_tps, "lookup_tps": draft_tps, "speedup": ratios,
        "speedup_median": statistics.median(ratios), "drafted": drafted, "accepted": accepted,
        "acceptance": accepted / drafted if drafted else 0.0, "identical_output": identical,
        "divergence_chars": divergence, "text_chars": len(plain.text),
    }  # fmt: skip


def batch_cost(engine: Any, sizes: list[int], after: int, reps: int = 30) -> dict[int, float]:
    """Milliseconds per llama_decode of m tokens with logits at every position (as a
    verification step decodes them), after a context of `after` tokens."""
    ll = engine._ll
    context = engine.model.tokenize(STORY, False)[:after]
    engine.reset()
    engine.decode_prompt(context, threading.Event())
    n0, cap = len(engine.tokens), max(sizes)
    batch = ll.llama_batch_init(cap, 0, 1)
    for i in range(cap):
        batch.n_seq_id[i], batch.logits[i] = 1, 1
        batch.seq_id[i][0] = 0
        batch.token[i], batch.pos[i] = context[i], n0 + i

    def timed(m: int) -> float:
        batch.n_tokens = m
        start = time.perf_counter()
        for _ in range(reps):
            if ll.llama_decode(engine._ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            ll.llama_memory_seq_rm(engine._mem, 0, n0, -1)
        return (time.perf_counter() - start) / reps * 1000

    try:
        return {m: measure(lambda m=m: timed(m)).value for m in sizes}
    finally:
        ll.llama_batch_free(batch)
        engine.reset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draft-max", type=int, default=None, help="default: infer's")
    parser.add_argument("--ngram", type=int, default=None, help="default: infer's")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the story's")
    parser.add_argument("--sweep", default="", help="also compare these --draft-max values")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=", ".join(VARIANTS))
    parser.add_argument("--no-curve", action="store_true", help="do not time verify batches")
    add_json_arg(parser, "speculative")
    args = parser.parse_args()
    engine = load_engine(args.threads)
    print(f"{machine()}; {args.threads} threads", file=sys.stderr)
    default_max = args.draft_max
    plan = [(v, default_max) for v in args.variants.split(",") if v]
    plan += [("full", int(x)) for x in args.sweep.split(",") if x]
    results = []
    for variant, k in plan:
        args.paragraphs, args.always = VARIANTS[variant]
        args.draft_max = k
        n = args.max_tokens or len(engine.model.tokenize(story(args), False))
        prompt_len = len(engine.model.tokenize(INSTRUCTION + with_typos(story(args)), False))
        always = " --draft-always" if args.always else ""
        print(f"{variant}: --draft lookup{always} --draft-max {k or 'default'}; prompt "
              f"~{prompt_len} tokens, answer {n} tokens", file=sys.stderr)  # fmt: skip
        res = compare(engine, args, n)
        res.update(variant=variant, always=args.always, prompt_tokens=prompt_len)
        results.append(res)
    report: dict[str, Any] = {"runs": results}
    if not args.no_curve:
        sizes = sorted({1, 2, 3, 5, 9, 11, 13, 17})
        report["batch_ms"] = {str(after): batch_cost(engine, sizes, after) for after in (500, 100)}
    settings = {"model": "smollm2", "threads": args.threads, "rounds": args.rounds,
                "ngram": args.ngram, "draft_max": default_max}  # fmt: skip
    write_results(args.json, "speculative.py", settings, report)
    for res in results:
        print(
            f"{res['variant']} draft-max {res['draft_max'] or 'default'}: plain "
            f"{statistics.median(res['plain_tps']):.1f} tok/s, lookup "
            f"{statistics.median(res['lookup_tps']):.1f} tok/s, speedup x"
            f"{res['speedup_median']:.2f} (rounds: {', '.join(f'{x:.2f}' for x in res['speedup'])})"
            f", acceptance {res['acceptance']:.0%} ({res['accepted']}/{res['drafted']}), "
            f"identical output: {res['identical_output']}"
        )
    for after, curve in report.get("batch_ms", {}).items():
        for m, ms in curve.items():
            print(f"after {after}: verify {m:2} tokens: {ms:6.2f} ms ({ms / m:5.2f} ms/token)")


if __name__ == "__main__":
    main()
