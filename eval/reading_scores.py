"""How closely block-sparse scoring of Whisper's readings follows dense scoring, past UniSparse's
``min_context``.

One live stream over the dev set (the chunks of ``eval.live_finals``, one growing context, finals
through ``LiveModel.finals``). At every chunk whose readings the LLM scores once the context has
passed ``min_context``, they are scored three ways on the same context: as one block-sparse token
tree (the engine's way where ``ModelRunner.tree_fits``), one after another sharing the first one's
block choice (its way where the tree does not fit), and densely (every key, the way contexts under
``min_context`` are scored). Reported per sparse way: how often the reading the LLM likes best is the
one dense scoring likes best, and the mean and largest |score - dense score| (nats, per reading).
The session goes on with the engine's own scores, so it transcribes as ``eval.live_finals`` does.

    python -m eval.reading_scores --emulate-avx2 --name reading_scores_avx2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from eval.bench_cpu import DEV, RESULTS, cpu_record, emulate_avx2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=None, help="first N dev utterances (default: all)")
    parser.add_argument("--manifest", type=Path, default=DEV)
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="limit torch, oneDNN, MKL and CTranslate2 to AVX2 (restarts the script)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--name", default="reading_scores", help="JSON file name (without .json)")
    return parser.parse_args(argv)


class ScoreComparison:
    """Wraps ``LLMEngine.score_continuations`` for the time of a ``with`` block: past ``min_context``
    each call is scored the three ways (``rows``: one dict per call), and answered as the engine would."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def __enter__(self) -> ScoreComparison:
        from asr.llm.engine import LLMEngine

        self.original = LLMEngine.score_continuations
        comparison = self

        def score_continuations(engine, seq, candidates):
            return comparison.score(engine, seq, [list(candidate) for candidate in candidates])

        LLMEngine.score_continuations = score_continuations
        return self

    def __exit__(self, *exc) -> None:
        from asr.llm.engine import LLMEngine

        LLMEngine.score_continuations = self.original

    def score(self, engine, seq, candidates: list[list[int]]) -> list[float]:
        from asr.llm.token_tree import token_tree

        runner = engine.runner
        tree = token_tree([candidate[:-1] for candidate in candidates])
        if runner.unisparse is None or seq.num_tokens + len(tree.tokens) < runner.unisparse.min_context:
            return self.original(engine, seq, candidates)
        fits = runner.tree_fits(len(tree.tokens))
        by_tree = engine._score_tree(seq, candidates, tree) if fits else None
        in_turn = engine._score_in_turn(seq, candidates)
        sparse, runner.unisparse = runner.unisparse, None  # every key: the dense scores
        try:
            dense = self.original(engine, seq, candidates)
        finally:
            runner.unisparse = sparse
        self.rows.append({"context": seq.num_tokens, "readings": len(candidates),
                          "tree_nodes": len(tree.tokens), "dense": dense, "tree": by_tree,
                          "in_turn": in_turn})
        return by_tree if fits else in_turn


def agreement(rows: list[dict], way: str) -> dict:
    """How the ``way`` scores of ``rows`` (where it ran) compare with the dense ones."""
    rows = [row for row in rows if row[way] is not None]
    if not rows:
        return {"calls": 0, "same_best": 0, "same_best_share": None, "mean_abs_error": None,
                "max_abs_error": None}
    errors = np.concatenate([np.abs(np.subtract(row[way], row["dense"])) for row in rows])
    same = sum(int(np.argmax(row[way]) == np.argmax(row["dense"])) for row in rows)
    return {"calls": len(rows), "same_best": same, "same_best_share": round(same / len(rows), 4),
            "mean_abs_error": round(float(errors.mean()), 4), "max_abs_error": round(float(errors.max()), 4)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.emulate_avx2:
        emulate_avx2("eval.reading_scores")
    from asr.live.session import ChunkRequest, LiveModel
    from asr.speech.audio import SAMPLE_RATE
    from eval.live_finals import manifest_audio, stream_chunks

    rows, audios = manifest_audio(args.manifest, args.utterances)
    model = LiveModel.load()
    chunks = stream_chunks(list(enumerate(audios)), SAMPLE_RATE)
    engine = model.open_engine(1, sum(len(audio) for _, _, audio in chunks) / SAMPLE_RATE + 60)
    decoder = model.open(engine)
    with ScoreComparison() as comparison:
        for _, start, audio in chunks:
            for _, caption in model.finals([ChunkRequest(audio, start, decoder)]):
                if isinstance(caption, Exception):
                    raise caption
    decoder.close()
    report = {"cpu": cpu_record(), "command": " ".join(sys.argv), "chunks": len(chunks),
              "ways": {way: agreement(comparison.rows, way) for way in ("tree", "in_turn")},
              "calls": comparison.rows}
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"{args.name}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'way':>8} {'calls':>6} {'same best':>10} {'mean |err|':>11} {'max |err|':>10}")
    for way, figures in report["ways"].items():
        print(f"{way:>8} {figures['calls']:>6} {figures['same_best']:>10} {figures['mean_abs_error']!s:>11} "
              f"{figures['max_abs_error']!s:>10}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
