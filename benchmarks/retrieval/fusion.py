"""Study of the hybrid fusion, offline, on the lists a benchmark run dumped (run.py --dump).

The engine fuses its top vector and top lexical chunks (30 of each for 10 results) by
reciprocal rank fusion (RRF, k=60, equal weights). This replays that fusion and variants
of it on the same lists and scores each, so a change to the fusion can be judged without
re-indexing:

    python -m benchmarks.retrieval.fusion /tmp/retrieval.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.retrieval.questions import Hit, Question, Scores, first_hit_rank, score

K = TypeVar("K", bound=Hashable)


def rrf(lists: Sequence[Sequence[K]], weights: Sequence[float], k: float = 60) -> list[K]:
    """Weighted reciprocal rank fusion: sum of weight / (k + rank) over the lists an item
    is in (rank 1-based); best first, ties in first-seen order (as the engine breaks them)."""
    scores: dict[K, float] = {}
    for items, weight in zip(lists, weights, strict=True):
        for rank, item in enumerate(items, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores, key=lambda item: -scores[item])


@dataclass(frozen=True)
class Case:
    question: Question
    line: int
    vector: list[Hit]
    lexical: list[Hit]
    hybrid: list[Hit]  # what the engine answered
    tiers: list[str | None] | None = None  # the lexical tier each lexical hit matched


Fuser = Callable[[Case], list[Hit]]


def _key(h: Hit) -> tuple[str, int]:
    return (h.path, h.start_line)


def fuse_with(
    weights: tuple[float, float], k: float = 60, lexical_depth: int | None = None
) -> Fuser:
    def fuse(case: Case) -> list[Hit]:
        vector, lexical = case.vector, case.lexical
        by_key = {_key(h): h for h in [*lexical, *vector]}
        order = rrf(
            [[_key(h) for h in vector], [_key(h) for h in lexical[:lexical_depth]]], weights, k
        )
        return [by_key[key] for key in order]

    return fuse


def by_tier(weights: dict[str, float], k: float = 60) -> Fuser:
    """Each lexical hit weighs by the tier it matched (name in the symbol, every word,
    any two words, any word): a hit on two words of a long question is weak evidence."""

    def fuse(case: Case) -> list[Hit]:
        if case.tiers is None:
            return fuse_with((1.0, 1.0), k)(case)
        scores: dict[tuple[str, int], float] = {}
        for rank, h in enumerate(case.vector, start=1):
            scores[_key(h)] = scores.get(_key(h), 0.0) + 1.0 / (k + rank)
        for rank, (h, tier) in enumerate(zip(case.lexical, case.tiers, strict=True), start=1):
            weight = weights.get(tier, 0.0) if tier else 0.0
            scores[_key(h)] = scores.get(_key(h), 0.0) + weight / (k + rank)
        by_key = {_key(h): h for h in [*case.lexical, *case.vector]}
        return [by_key[key] for key in sorted(scores, key=lambda key: -scores[key])]

    return fuse


VARIANTS: dict[str, Fuser] = {
    "rrf k=60 1:1 (the engine's)": fuse_with((1.0, 1.0)),
    "rrf k=60 1:0.5": fuse_with((1.0, 0.5)),
    "rrf k=60 1:0.3": fuse_with((1.0, 0.3)),
    "rrf k=10 1:0.5": fuse_with((1.0, 0.5), k=10),
    "rrf k=60 1:1, lexical top 10": fuse_with((1.0, 1.0), lexical_depth=10),
    "rrf k=60 1:1, lexical top 3": fuse_with((1.0, 1.0), lexical_depth=3),
    "by tier 1/1/0.5/0.25": by_tier({"symbol": 1.0, "all": 1.0, "pairs": 0.5, "any": 0.25}),
    "vector alone": lambda case: case.vector,
    "lexical alone": lambda case: case.lexical,
}


def evaluate(cases: Sequence[Case], fuser: Fuser) -> Scores:
    ranks = [first_hit_rank(fuser(c)[:10], c.question, c.line) for c in cases]
    return score(ranks, [])


def agreement(cases: Sequence[Case]) -> float:
    """Share of questions where replaying the engine's fusion gives the engine's top 10:
    the check that the replay models the engine at all."""
    same = sum(
        1
        for c in cases
        if [_key(h) for h in fuse_with((1.0, 1.0))(c)[:10]] == [_key(h) for h in c.hybrid[:10]]
    )
    return same / len(cases)


def load_cases(path: Path) -> list[Case]:
    data = json.loads(path.read_text(encoding="utf-8"))

    def hits(rows: list[list[Any]]) -> list[Hit]:
        return [Hit(p, int(s), int(e), sym) for p, s, e, sym in rows]

    tiers = data.get("lexical_tiers")
    cases = []
    for i, q in enumerate(data["questions"]):
        question = Question(q["question"], q["path"], q["symbol"], names_symbol=False)
        cases.append(
            Case(
                question,
                int(q["line"]),
                hits(data["candidates"]["vector"][i]),
                hits(data["candidates"]["lexical"][i]),
                hits(data["results"]["hybrid"][i]),
                tiers[i] if tiers else None,
            )
        )
    return cases


def render(cases: Sequence[Case]) -> str:
    counts: dict[str, int] = {}
    for c in cases:
        for tier in c.tiers or ():
            counts[str(tier)] = counts.get(str(tier), 0) + 1
    lines = [
        f"fusion study on {len(cases)} questions (replay matches the engine's hybrid top 10 "
        f"for {agreement(cases):.0%} of them)",
        f"{'variant':<32} {'hit@1':>6} {'hit@3':>6} {'hit@10':>6} {'MRR':>6}",
    ]
    if counts:
        lines.insert(
            1, "lexical candidates by tier: " + ", ".join(f"{t} {n}" for t, n in counts.items())
        )
    for name, fuser in VARIANTS.items():
        s = evaluate(cases, fuser)
        lines.append(
            f"{name:<32} {s.hit_at_1:>6.2f} {s.hit_at_3:>6.2f} {s.hit_at_10:>6.2f} {s.mrr:>6.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Replay the hybrid fusion on dumped lists.")
    parser.add_argument("dump", type=Path, help="a file written by run.py --dump")
    args = parser.parse_args(argv)
    print(render(load_cases(args.dump)))


if __name__ == "__main__":
    main()
