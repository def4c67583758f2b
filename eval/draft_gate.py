"""Choose the draft gate and tolerances (``asr.speech.draft_decoding``) on validation speech: WER of the
Whisper draft alone and of the speech LLM decoding against it at several gates and tolerances.

Each utterance (one chunk, <= 30 s) is encoded and drafted once, then decoded in a fresh session per
setting, so the rows differ only in the setting. A gate of 0 keeps every draft whole (the row equals
the draft); a gate above 1 lets the LLM check every token (the decoding before the gate). Prints a
table, writes JSON (references, drafts, transcripts per setting, WER/CER, share of drafts kept
whole) and, given several result files, plots WER against the gate per set. Tune on several kinds of
speech together (read, accented, synthetic), never on one alone.

    python -m eval.draft_gate run MANIFEST --every 25 --gates 0 0.5 0.8 0.9 1.01 --output out.json
    python -m eval.draft_gate plot out1.json out2.json --output gate.png
    python -m eval.draft_gate plot out1.json out2.json --against correct_share --output share.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from tqdm import tqdm

from eval.line_plot import line_plot


def _setting_name(setting) -> str:
    if setting.rescore:
        return f"rescore gate={setting.gate:g} weight={setting.llm_weight:g} share={setting.correct_share:g}"
    return f"correct gate={setting.gate:g} tol={setting.tolerance:g} end={setting.end_tolerance:g}"


def _settings(args: argparse.Namespace) -> list:
    """The grid: per mode, gates x LLM weights x correct shares (rescore) or gates x tolerances x end
    tolerances (correct)."""
    from asr.speech.draft_decoding import DraftDecoding

    settings = []
    if "rescore" in args.modes:
        settings += [DraftDecoding(gate=gate, llm_weight=weight, correct_share=share) for gate, weight, share
                     in itertools.product(args.gates, args.llm_weights, args.correct_shares)]
    if "correct" in args.modes:
        settings += [DraftDecoding(gate=g, tolerance=t, end_tolerance=e, rescore=False)
                     for g, t, e in itertools.product(args.gates, args.tolerances, args.end_tolerances)]
    return settings


def run(args: argparse.Namespace) -> None:
    import torch

    from asr.corpus import read_corpus
    from asr.normalize import error_rates
    from asr.speech.audio import SAMPLE_RATE
    from asr.speech.encoder import CHUNK_SAMPLES
    from asr.speech.model import load_speech_model
    from asr.speech.pipeline import TranscribeOptions

    torch.set_num_threads(args.threads)
    options = TranscribeOptions(device=args.device, attention="dense")
    model = load_speech_model(args.model, options.engine_config(), drafts=True)
    utterances = read_corpus(args.manifest)[:: args.every]
    settings = _settings(args)
    names = [_setting_name(s) for s in settings]
    # other readings of every draft unsure at the highest gate (a session checks its own gate first)
    search = max((s.search() for s in settings if s.search()), key=lambda found: found.gate, default=None)
    references, drafts = [], []
    transcripts: dict[str, list[str]] = {name: [] for name in names}
    kept: dict[str, int] = dict.fromkeys(names, 0)
    started = time.perf_counter()
    for utterance in tqdm(utterances, desc="utterances"):
        audio = utterance.load()[:CHUNK_SAMPLES]
        encoded = model.encode_chunks([audio], search)[0]
        references.append(utterance.text)
        drafts.append(encoded.draft.text)
        for name, setting in zip(names, settings):
            engine = model.open_engine(options.engine_config(), expected_seconds=len(audio) / SAMPLE_RATE)
            with model.open_session(engine, options.loop, None, setting) as session:
                segment = session.transcribe_chunk(audio, 0.0, encoded=encoded)
                kept[name] += session.stats.drafts_kept
            transcripts[name].append(segment.text if segment else "")
    rows = [{"decoding": "whisper draft", **_rates(error_rates(references, drafts))}]
    rows += [
        {"decoding": "rescore" if s.rescore else "correct", "gate": s.gate, "llm_weight": s.llm_weight,
         "correct_share": s.correct_share,
         "tolerance": s.tolerance, "end_tolerance": s.end_tolerance,
         "kept_share": kept[name] / max(1, len(utterances)),
         **_rates(error_rates(references, transcripts[name]))}
        for name, s in zip(names, settings)
    ]
    print(f"{'decoding':<14} {'gate':>5} {'weight':>6} {'share':>5} {'tol':>5} {'end':>5} {'kept':>6} "
          f"{'WER':>7} {'CER':>7}")
    for row in rows:
        setting = " " * 37
        if "gate" in row:
            setting = (f"{row['gate']:>5g} {row['llm_weight']:>6g} {row['correct_share']:>5g} "
                       f"{row['tolerance']:>5g} {row['end_tolerance']:>5g} {100 * row['kept_share']:5.1f}%")
        print(f"{row['decoding']:<14} {setting} {100 * row['wer']:6.2f}% {100 * row['cer']:6.2f}%")
    result = {
        "manifest": str(args.manifest),
        "every": args.every,
        "utterances": len(utterances),
        "model": args.model or "embedded",
        "device": args.device,
        "seconds": round(time.perf_counter() - started),
        "rows": rows,
        "references": references,
        "drafts": drafts,
        "transcripts": transcripts,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))


def _rates(rates: tuple[float, float]) -> dict:
    return {"wer": rates[0], "cer": rates[1]}


# the settings a plot can put on its x axis: key in a result row -> axis label
X_AXES = {"gate": "gate (Whisper word probability kept unchecked)",
          "correct_share": "correct share (guessed words above which a chunk is corrected)",
          "llm_weight": "LLM weight (times the LLM's log-probability beside Whisper's)"}


def _line_key(row: dict, against: str) -> str:
    """The legend of the line ``row`` belongs to: every setting but the one on the x axis."""
    if row["decoding"] == "rescore":
        fixed = {"gate": f"gate {row['gate']:g}", "llm_weight": f"LLM weight {row['llm_weight']:g}",
                 "correct_share": f"correct above {row['correct_share']:g}"}
    else:
        fixed = {"gate": f"gate {row['gate']:g}",
                 "tolerance": f"tol {row['tolerance']:g}/{row['end_tolerance']:g}"}
    return ", ".join([row["decoding"], *(text for key, text in fixed.items() if key != against)])


def plot(args: argparse.Namespace) -> None:
    """WER against the gate (or ``--against`` another swept setting), one line per set and decoding
    setting, the draft alone dotted."""
    series = []
    for path, fmt in zip(args.results, itertools.cycle(("o-", "s-", "^-", "d-", "v-"))):
        result = json.loads(path.read_text())
        draft = next(row for row in result["rows"] if "gate" not in row)
        name = args.names.get(str(path), Path(result["manifest"]).parent.name or path.stem)
        rows = [row for row in result["rows"] if "gate" in row]
        for key in sorted({_line_key(row, args.against) for row in rows}):
            line = sorted((row[args.against], 100 * row["wer"]) for row in rows
                          if _line_key(row, args.against) == key)
            series.append(([x for x, _ in line], [w for _, w in line], fmt, f"{name}, {key}"))
        xs = sorted({row[args.against] for row in rows})
        series.append((xs, [100 * draft["wer"]] * len(xs), fmt[0] + ":", f"Whisper draft, {name}"))
    line_plot(series, args.output, X_AXES[args.against], "WER (%)", "Draft gate on validation speech",
              figsize=(8, 5))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="decode one manifest at several settings")
    run_parser.add_argument("manifest", type=Path)
    run_parser.add_argument("--every", type=int, default=1, help="take every N-th utterance")
    run_parser.add_argument("--gates", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.9, 0.95, 1.01])
    run_parser.add_argument("--modes", nargs="+", default=["rescore", "correct"],
                            choices=["rescore", "correct"])
    run_parser.add_argument("--llm-weights", type=float, nargs="+", default=[0.3])
    run_parser.add_argument("--correct-shares", type=float, nargs="+", default=[0.25],
                            help="rescore: share of guessed words above which a chunk is corrected instead")
    run_parser.add_argument("--tolerances", type=float, nargs="+", default=[1.0])
    run_parser.add_argument("--end-tolerances", type=float, nargs="+", default=[5.0])
    run_parser.add_argument("--model", help="speech model directory (default: the embedded one)")
    run_parser.add_argument("--device", default="cpu")
    run_parser.add_argument("--threads", type=int, default=2)
    run_parser.add_argument("--output", type=Path, required=True)
    plot_parser = commands.add_parser("plot", help="WER against the gate from run outputs")
    plot_parser.add_argument("results", type=Path, nargs="+")
    plot_parser.add_argument("--names", type=json.loads, default={},
                             help='JSON {"result path": "set name"} for the legend')
    plot_parser.add_argument("--against", choices=sorted(X_AXES), default="gate",
                             help="the swept setting on the x axis")
    plot_parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    run(args) if args.command == "run" else plot(args)


if __name__ == "__main__":
    main()
