"""Choose the draft tolerance (``asr.speech.draft_decoding``) on validation speech: WER of the Whisper
draft alone and of the speech LLM decoding against it at several tolerances.

Each utterance (one chunk, <= 30 s) is encoded and drafted once, then decoded in a fresh session
per tolerance, so the rows differ only in the tolerance. Prints a table, writes JSON (references,
drafts, transcripts per tolerance, WER/CER) and, given several result files, plots WER against
tolerance per set. Tune on held-out sets, never on the dev set the product is reported on.

    python -m eval.draft_tolerance run MANIFEST --every 25 --tolerances 0 1 3 10 --output out.json
    python -m eval.draft_tolerance plot out1.json out2.json --output tolerance.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm import tqdm

from eval.line_plot import line_plot


def run(args: argparse.Namespace) -> None:
    import torch

    from asr.corpus import read_corpus
    from asr.normalize import error_rates
    from asr.speech.draft_decoding import DraftDecoding
    from asr.speech.model import load_speech_model
    from asr.speech.pipeline import TranscribeOptions

    torch.set_num_threads(args.threads)
    options = TranscribeOptions(device="cpu", attention="dense")
    model = load_speech_model(args.model, options.engine_config(), drafts=True)
    utterances = read_corpus(args.manifest)[:: args.every]
    references, drafts = [], []
    transcripts: dict[float, list[str]] = {tolerance: [] for tolerance in args.tolerances}
    started = time.perf_counter()
    for utterance in tqdm(utterances, desc="utterances"):
        audio = utterance.load()[: 30 * 16000]
        encoded = model.encode_chunks([audio])[0]
        references.append(utterance.text)
        drafts.append(encoded.draft or "")
        for tolerance in args.tolerances:
            engine = model.open_engine(options.engine_config(), expected_seconds=len(audio) / 16000)
            with model.open_session(
                engine, options.loop, None, DraftDecoding(tolerance=tolerance)
            ) as session:
                segment = session.transcribe_chunk(audio, 0.0, encoded=encoded)
            transcripts[tolerance].append(segment.text if segment else "")
    rows = [{"decoding": "whisper draft", "tolerance": None, **_rates(error_rates(references, drafts))}]
    rows += [
        {"decoding": "speech LLM", "tolerance": tolerance, **_rates(error_rates(references, hyps))}
        for tolerance, hyps in transcripts.items()
    ]
    print(f"{'decoding':<14} {'tolerance':>9} {'WER':>7} {'CER':>7}")
    for row in rows:
        tolerance = "" if row["tolerance"] is None else f"{row['tolerance']:g}"
        print(f"{row['decoding']:<14} {tolerance:>9} {100 * row['wer']:6.2f}% {100 * row['cer']:6.2f}%")
    result = {
        "manifest": str(args.manifest),
        "every": args.every,
        "utterances": len(utterances),
        "model": args.model or "embedded",
        "seconds": round(time.perf_counter() - started),
        "rows": rows,
        "references": references,
        "drafts": drafts,
        "transcripts": {f"{tolerance:g}": hyps for tolerance, hyps in transcripts.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))


def _rates(rates: tuple[float, float]) -> dict:
    return {"wer": rates[0], "cer": rates[1]}


def plot(args: argparse.Namespace) -> None:
    series = []
    for path, fmt in zip(args.results, ("o-", "s-", "^-", "d-")):
        result = json.loads(path.read_text())
        llm = [row for row in result["rows"] if row["tolerance"] is not None]
        draft = next(row for row in result["rows"] if row["tolerance"] is None)
        name = Path(result["manifest"]).parent.name or path.stem
        tolerances = [row["tolerance"] for row in llm]
        series.append((tolerances, [100 * row["wer"] for row in llm], fmt, f"speech LLM, {name}"))
        series.append((tolerances, [100 * draft["wer"]] * len(llm), fmt[0] + ":", f"Whisper draft, {name}"))
    line_plot(series, args.output, "draft tolerance (nats)", "WER (%)", "Draft tolerance on held-out speech")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="decode one manifest at several tolerances")
    run_parser.add_argument("manifest", type=Path)
    run_parser.add_argument("--every", type=int, default=1, help="take every N-th utterance")
    run_parser.add_argument("--tolerances", type=float, nargs="+", default=[0.0, 1.0, 3.0, 10.0])
    run_parser.add_argument("--model", help="speech model directory (default: the embedded one)")
    run_parser.add_argument("--threads", type=int, default=2)
    run_parser.add_argument("--output", type=Path, required=True)
    plot_parser = commands.add_parser("plot", help="WER against tolerance from run outputs")
    plot_parser.add_argument("results", type=Path, nargs="+")
    plot_parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    run(args) if args.command == "run" else plot(args)


if __name__ == "__main__":
    main()
