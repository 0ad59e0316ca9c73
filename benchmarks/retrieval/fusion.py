"""Study of the hybrid fusion and the result list, offline, on the lists a benchmark run
dumped (`run.py --dump DIR`): the engine's own pure functions (codebase_mcp.search.fusion and
codebase_mcp.search.results) replayed with other parameters on the same vector and lexical
lists, so a ranking change can be judged on every question set at once, without
re-indexing:

    python -m benchmarks.retrieval.fusion DIR [--grid]

Prints, per set, hit@1, hit@3, MRR@10 and NDCG@10 of the engine's settings and of
variants (rank fusion, other vector shares, no role weights, no per-file cap, ...).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from codebase_mcp.search import fusion as engine_fusion
from codebase_mcp.search import results as engine_results
from codebase_mcp.search.results import Ranked, Shaping


@dataclass(frozen=True)
class Case:
    question: str
    intent: str
    names_symbol: bool
    answers: list[tuple[str, str, int]]  # path, symbol, def line
    vector: list[Ranked]
    lexical: list[Ranked]
    # each list's scores of the other list's candidates (search.hybrid.complete_scores)
    vector_extra: dict[int, float] = field(default_factory=dict)
    lexical_extra: dict[int, float] = field(default_factory=dict)


def _ranked(row: Sequence[Any]) -> Ranked:
    key, repository, path, start, end, symbol, kind, language, score = row
    return Ranked(key, repository, path, start, end, symbol, kind, language, "", float(score))


def load(path: Path) -> tuple[str, list[Case]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    cases = [
        Case(
            q["question"],
            q["intent"],
            q["names_symbol"],
            [tuple(a) for a in q["answers"]],
            [_ranked(r) for r in lists["vector"]],
            [_ranked(r) for r in lists["lexical"]],
            {int(i): float(v) for i, v in lists.get("vector_extra", [])},
            {int(i): float(v) for i, v in lists.get("lexical_extra", [])},
        )
        for q, lists in zip(data["questions"], data["lists"], strict=True)
    ]
    return data["set"], cases


def is_answer(item: Ranked, answers: Sequence[tuple[str, str, int]]) -> bool:
    for path, symbol, line in answers:
        if item.path != path:
            continue
        if item.symbol and (item.symbol == symbol or item.symbol.endswith("." + symbol)):
            return True
        if item.start_line <= line <= item.end_line:
            return True
    return False


def rank_of(items: Sequence[Ranked], case: Case) -> int | None:
    for rank, item in enumerate(items[:10], start=1):
        if is_answer(item, case.answers):
            return rank
    return None


@dataclass(frozen=True)
class Measures:
    hit1: float
    hit3: float
    mrr: float
    ndcg: float

    def __str__(self) -> str:
        return f"{self.hit1:.3f} {self.hit3:.3f} {self.mrr:.3f} {self.ndcg:.3f}"


def measure(ranks: Sequence[int | None]) -> Measures:
    n = len(ranks)
    top = [r for r in ranks if r is not None]
    return Measures(
        sum(r <= 1 for r in top) / n,
        sum(r <= 3 for r in top) / n,
        sum(1 / r for r in top) / n,
        sum(1 / math.log2(1 + r) for r in top) / n,
    )


# --- variants ------------------------------------------------------------------------------

Pipeline = Callable[[Case], list[Ranked]]


@dataclass(frozen=True)
class Params:
    share_question: float = engine_fusion.VECTOR_WEIGHT_QUESTION
    share_name: float = engine_fusion.VECTOR_WEIGHT_NAME
    share_mixed: float = engine_fusion.VECTOR_WEIGHT_MIXED
    method: str = engine_fusion.NORMALISATION  # max | minmax | rrf
    rrf_k: float = engine_fusion.RRF_K
    complete: bool = True  # use each list's scores of the other's candidates
    shaping: Shaping = field(default_factory=Shaping)

    def share(self, query: str) -> float:
        if engine_fusion.looks_like_name(query):
            return self.share_name
        if engine_fusion.vector_weight(query) == engine_fusion.VECTOR_WEIGHT_QUESTION:
            return self.share_question
        return self.share_mixed


RAW = Shaping(
    role_weights=dict.fromkeys(("code", "test", "docs", "generated"), 1.0),
    name_bonus=1.0,
    max_per_file=None,
    merge=False,
)


def hybrid(p: Params) -> Pipeline:
    def run(case: Case) -> list[Ranked]:
        by_id = {r.key: r for r in [*case.lexical, *case.vector]}
        if p.method == "rrf":
            share = p.share(case.question)
            fused = engine_fusion.rrf(
                [[r.key for r in case.vector], [r.key for r in case.lexical]],
                k=int(p.rrf_k),
                weights=[share, 1 - share],
            )
        else:
            vector = [(r.key, r.score) for r in case.vector]
            lexical = [(r.key, r.score) for r in case.lexical]
            if p.complete:
                vector += list(case.vector_extra.items())
                lexical += list(case.lexical_extra.items())
            fused = engine_fusion.fuse(vector, lexical, p.share(case.question), p.method)
        items = [replace(by_id[i], score=s) for i, s in fused]
        return engine_results.finish(items, case.question, 10, p.shaping)

    return run


def single(which: str, shaping: Shaping) -> Pipeline:
    def run(case: Case) -> list[Ranked]:
        return engine_results.finish(list(getattr(case, which)), case.question, 10, shaping)

    return run


def shaped(**changes: Any) -> Shaping:
    return replace(Shaping(), **changes)


def roles(test: float, docs: float, generated: float = 0.6) -> dict[str, float]:
    return {"code": 1.0, "test": test, "docs": docs, "generated": generated}


def evaluate(cases: Sequence[Case], pipeline: Pipeline) -> Measures:
    return measure([rank_of(pipeline(c), c) for c in cases])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dump", type=Path, help="the directory run.py --dump wrote")
    parser.add_argument("--grid", action="store_true", help="also search the vector shares")
    args = parser.parse_args(argv)
    sets = [load(p) for p in sorted(args.dump.glob("*.json"))]
    engine = Params()
    variants: dict[str, Pipeline] = {
        "lexical (engine)": single("lexical", engine.shaping),
        "lexical, raw list": single("lexical", RAW),
        "vector (engine)": single("vector", engine.shaping),
        "vector, raw list": single("vector", RAW),
        "hybrid (engine)": hybrid(engine),
        "hybrid, raw shaping": hybrid(replace(engine, shaping=RAW)),
        "hybrid, no roles": hybrid(replace(engine, shaping=shaped(role_weights=RAW.role_weights))),
        "hybrid, no name bonus": hybrid(replace(engine, shaping=shaped(name_bonus=1.0))),
        "hybrid, name bonus 1.5": hybrid(replace(engine, shaping=shaped(name_bonus=1.5))),
        "hybrid, roles .6/.7": hybrid(
            replace(engine, shaping=shaped(role_weights=roles(0.6, 0.7)))
        ),
        "hybrid, roles .85/.9": hybrid(
            replace(engine, shaping=shaped(role_weights=roles(0.85, 0.9)))
        ),
        "hybrid, no cap": hybrid(replace(engine, shaping=shaped(max_per_file=None))),
        "hybrid, cap 4": hybrid(replace(engine, shaping=shaped(max_per_file=4))),
        "hybrid, cap 5": hybrid(replace(engine, shaping=shaped(max_per_file=5))),
        "hybrid, no merge": hybrid(replace(engine, shaping=shaped(merge=False))),
        "hybrid, minmax": hybrid(replace(engine, method="minmax")),
        "hybrid, lists only": hybrid(replace(engine, complete=False)),
        "hybrid, rrf k=10": hybrid(replace(engine, method="rrf", rrf_k=10)),
        "hybrid, rrf k=60": hybrid(replace(engine, method="rrf", rrf_k=60)),
    }
    print("hit@1 hit@3 MRR@10 NDCG@10 per set")
    print(f"{'variant':<22} " + " | ".join(f"{name:^27}" for name, _ in sets))
    for label, pipeline in variants.items():
        cells = [str(evaluate(cases, pipeline)) for _, cases in sets]
        print(f"{label:<22} " + " | ".join(cells))
    if args.grid:
        print("\nvector shares (question, name, mixed), by mean hit@3 over the sets:")
        grid = []
        steps = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
        for q, n, m in itertools.product(steps, [0.2, 0.3, 0.4, 0.5, 0.6], steps):
            p = replace(engine, share_question=q, share_name=n, share_mixed=m)
            found = [evaluate(cases, hybrid(p)) for _, cases in sets]
            grid.append((sum(f.hit3 for f in found) / len(found), (q, n, m), found))
        for mean, shares, found in sorted(grid, key=lambda g: -g[0])[:15]:
            print(f"  {shares} mean {mean:.3f}: " + " | ".join(str(f) for f in found))


if __name__ == "__main__":
    main()
