"""Train the speech adapter (projector + LoRA on the LLM) of the speech LLM.

The Whisper encoder stays frozen; its frames are stacked and projected into the LLM's embedding
space; LoRA adapts the LLM. Each example is a session of 1-3 consecutive chunks in one context,
laid out exactly as long-form inference lays out a recording, so the model learns to transcribe
the newest chunk after earlier audio and text; in some sessions that earlier text is corrupted as
the model's own errors would be (``--noisy-history``), so it does not learn to copy them. Data:
manifests of synthetic speech (training/synth_speech.py) and any manifest or LibriSpeech-layout
directory given with --data. With ``--drafts``, each chunk's Whisper draft is read from the drafts
that ``python -m training.drafts`` stored beside its manifest when they exist (decoded once per
utterance), else decoded every step.

    python -m training.train_asr --data .cache/tts_v1 --steps 3000 --out runs/asr
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from asr.corpus import Utterance, read_corpus
from asr.llm.lora import LoraConfig, add_lora, lora_state_dict
from asr.speech.adapter import SpeechAdapter
from asr.speech.audio import SAMPLE_RATE
from asr.speech.projector import FrameStackProjector, ProjectorConfig
from asr.speech.prompt import PromptIds, draft_token_ids
from asr.speech.sessions import pad_sessions, session_inputs
from training.ctc_head import VocabularyCtcHead
from training.draft_cache import DraftCache, variant_wave, whisper_digest
from training.history_noise import corrupt_transcript
from training.mel_warp import MelWarp
from training.schedule import Schedule
from training.spec_augment import SpecAugment
from training.synth.augment import augment_waveform

log = logging.getLogger("train_asr")
MAX_CHUNK_SECONDS = 30.0
TURN_COUNTS, TURN_WEIGHTS = (1, 2, 3, 6), (0.5, 0.25, 0.15, 0.1)  # some long sessions: long-form contexts
SILENT_CHUNK_SHARE = 0.03  # chunks of noise only, whose transcript is empty
POOL_BATCHES = 4  # batches drawn together and sorted by length
NOISY_HISTORY_SHARE = 0.3  # multi-turn sessions whose earlier transcripts are corrupted (and not learnt)


class SessionStream(IterableDataset):
    """Endless batches of random sessions; a session is a list of turns (waveform [samples] float32,
    transcript, supervised[, draft]). With a ``drafts`` cache, an utterance that has cached drafts
    plays one of its cached variants (``training.draft_cache``: clean audio without ``augment``, a
    seeded augmentation with it) and its turn carries that variant's draft as a fourth element; other
    turns have none (``session_batch`` drafts them). In ``noisy_history`` of the multi-turn sessions
    the transcripts before the last turn are corrupted (``training.history_noise``) and not
    supervised. Each worker draws
    ``POOL_BATCHES`` batches' worth of sessions at a time and cuts
    them, sorted by audio length, into batches (yielded in random order), so a batch pads little."""

    def __init__(self, utterances: list[Utterance], augment: bool, seed: int, batch: int,
                 noisy_history: float = 0.0, drafts: DraftCache | None = None) -> None:
        self.utterances, self.augment, self.seed, self.batch = utterances, augment, seed, batch
        self.noisy_history, self.drafts = noisy_history, drafts

    def _speech_turn(self, utt: Utterance, rng: random.Random, np_rng: np.random.Generator) -> tuple:
        """(waveform, transcript, True) of one utterance, plus its cached draft when there is one."""
        cached = self.drafts.lookup(utt.audio) if self.drafts is not None else None
        variants = cached.playable(self.augment) if cached is not None else []
        if variants:
            variant = rng.choice(variants)
            return variant_wave(utt.load(), cached.key, variant), utt.text, True, cached.by_variant[variant]
        wave = utt.load()[: int(MAX_CHUNK_SECONDS * SAMPLE_RATE)]
        if self.augment:
            wave = augment_waveform(wave, SAMPLE_RATE, np_rng)[: int(MAX_CHUNK_SECONDS * SAMPLE_RATE)]
        return wave, utt.text, True

    def _session(self, rng: random.Random, np_rng: np.random.Generator) -> list[tuple[np.ndarray, str, bool]]:
        session = []
        for _ in range(rng.choices(TURN_COUNTS, TURN_WEIGHTS)[0]):
            if rng.random() < SILENT_CHUNK_SHARE:
                seconds = rng.uniform(1.0, 8.0)
                noise = np_rng.standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32)
                session.append((noise * 10 ** rng.uniform(-4, -2), "", True))
                continue
            session.append(self._speech_turn(rng.choice(self.utterances), rng, np_rng))
        if len(session) > 1 and rng.random() < self.noisy_history:
            pool = rng.choice(self.utterances).text.split()
            earlier = [(wave, corrupt_transcript(text, pool, rng), False, *draft)
                       for wave, text, _, *draft in session[:-1]]
            session = earlier + session[-1:]
        return session

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed + (info.id if info else 0))
        np_rng = np.random.default_rng(self.seed + 1000 + (info.id if info else 0))
        while True:
            pool = sorted((self._session(rng, np_rng) for _ in range(POOL_BATCHES * self.batch)),
                          key=lambda session: sum(len(turn[0]) for turn in session))
            batches = [pool[i : i + self.batch] for i in range(0, len(pool), self.batch)]
            rng.shuffle(batches)
            yield from batches


def with_cached_drafts(utterances: list[Utterance], drafts: DraftCache, augment: bool) -> list[Utterance]:
    """The utterances whose cached drafts hold a variant training plays (``UtteranceDrafts.playable``)."""
    return [utt for utt in utterances if (entry := drafts.lookup(utt.audio)) and entry.playable(augment)]


def keep_batch(batch: list) -> list:
    """The loader's collate step: batches arrive whole from ``SessionStream`` (numpy stays numpy)."""
    return batch


def build_models(args, device, attn_implementation: str | None = None):
    """The speech LLM's parts; ``attn_implementation``: the LLM's attention (default: transformers')."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from asr.llm.embedded import embedded_llm_dir
    from asr.speech.encoder import AudioEncoder

    llm_dir = args.llm or str(embedded_llm_dir())
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    llm = AutoModelForCausalLM.from_pretrained(
        llm_dir, dtype=torch.bfloat16, attn_implementation=attn_implementation
    ).to(device)
    for p in llm.parameters():
        p.requires_grad_(False)
    lora_config = LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank)
    add_lora(llm, lora_config)
    if args.checkpointing:
        llm.gradient_checkpointing_enable()
    encoder = AudioEncoder.load(args.whisper, device=device, dtype=torch.float16, drafts=args.drafts)
    projector_config = ProjectorConfig(
        encoder_dim=encoder.dim, llm_dim=llm.config.hidden_size, stack=args.stack
    )
    projector = FrameStackProjector(projector_config).to(device)
    lora_params = [p for n, p in llm.named_parameters() if n.endswith((".lora_a", ".lora_b"))]
    return tokenizer, llm, encoder, projector, projector_config, lora_config, lora_params


def chunk_drafts(batch: list, chunks: list[np.ndarray], encoder) -> list[str]:
    """Each chunk's Whisper draft: the one its turn carries (cached), else decoded now from its
    waveform (its un-augmented log-mel, as inference sees it), all missing ones in one batch."""
    drafts = [turn[3] if len(turn) > 3 else None for session in batch for turn in session]
    missing = [index for index, draft in enumerate(drafts) if draft is None]
    if missing:
        for index, draft in zip(missing, encoder.draft([chunks[i] for i in missing], batch_size=64)):
            drafts[index] = draft.text
    return drafts


def session_batch(batch, tokenizer, prompt, llm, encoder, projector, features_transform=None):
    """Sessions -> (embeds, labels, attention mask) for the LLM, and (audio tokens [chunks, tokens,
    hidden], their lengths [chunks], transcript ids per chunk) for the CTC head. An encoder loaded
    with drafts puts each chunk's Whisper draft (``chunk_drafts``) into the context."""
    chunks = [turn[0] for session in batch for turn in session]
    drafts = None
    if encoder.drafter is not None:
        drafts = [draft_token_ids(tokenizer, draft) for draft in chunk_drafts(batch, chunks, encoder)]
    # [chunks, frames, encoder_dim], [chunks]
    frames, frame_lengths = encoder.encode_padded(chunks, features_transform=features_transform)
    audio = projector(frames.float())  # [chunks, tokens, hidden]
    audio_lengths = (frame_lengths + projector.config.stack - 1) // projector.config.stack
    texts = [
        tokenizer(turn[1], add_special_tokens=False).input_ids for session in batch for turn in session
    ]
    cursor, sessions = 0, []
    for session in batch:
        turns = range(cursor, cursor + len(session))
        sessions.append(
            session_inputs(
                [audio[i, : audio_lengths[i]] for i in turns],
                [texts[i] for i in turns],
                prompt,
                llm.get_input_embeddings(),
                [turn[2] for turn in session],
                None if drafts is None else [drafts[i] for i in turns],
            )
        )
        cursor += len(session)
    return pad_sessions(sessions), (audio, audio_lengths, texts)


@torch.no_grad()
def transcribe_one(wave, tokenizer, prompt, llm, encoder, projector, max_new_tokens=200) -> str:
    """Greedy transcript of one chunk in a fresh session (validation; inference uses the engine)."""
    frames, drafts = encoder.encode_with_drafts([wave], drafts=encoder.drafter is not None)
    audio = projector(frames[0][None].float())[0]
    embed = llm.get_input_embeddings()
    ids = lambda xs: embed(torch.tensor(xs, device=audio.device))  # noqa: E731
    draft_ids = draft_token_ids(tokenizer, drafts[0].text) if drafts else None
    inputs = torch.cat([ids(prompt.session_start + prompt.before_audio), audio.to(embed.weight.dtype),
                        ids(prompt.after_audio_with(draft_ids))])[None]
    with torch.autocast(audio.device.type, dtype=torch.bfloat16, enabled=audio.device.type == "cuda"):
        out = llm.generate(
            inputs_embeds=inputs,
            attention_mask=torch.ones(inputs.shape[:2], device=audio.device, dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=prompt.end_of_turn,
            pad_token_id=prompt.end_of_turn,
        )
    return tokenizer.decode(out[0], skip_special_tokens=True).strip()


def validate(manifest: str, limit: int, *models) -> dict:
    from asr.normalize import error_rates

    utterances = read_corpus(manifest)[:limit]
    refs, hyps = [], []
    for utt in utterances:
        refs.append(utt.text)
        hyps.append(transcribe_one(utt.load(), *models))
    wer, cer = error_rates(refs, hyps)
    for ref, hyp in list(zip(refs, hyps))[:5]:
        log.info("REF %s\nHYP %s", ref, hyp)
    return {"wer": wer, "cer": cer, "utterances": len(refs)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run's configuration from the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="manifest.jsonl files or directories (TTS output, LibriSpeech layout)",
    )
    parser.add_argument("--out", required=True, help="output directory for the adapter checkpoint")
    parser.add_argument(
        "--llm", help="Hugging Face LLM directory (default: the embedded SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--whisper", help="Whisper directory (default: the embedded Whisper base)")
    parser.add_argument("--resume", help="adapter directory to continue from")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=24, help="sessions per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="projector learning rate")
    parser.add_argument("--lora-lr-scale", type=float, default=0.5, help="LoRA learning rate = lr * this")
    parser.add_argument("--lora-start", type=int, default=0,
                        help="steps of projector-only warm-up before LoRA trains (the LLM's text prior "
                        "cannot stand in for listening while the projector learns to align)")
    parser.add_argument("--ctc-weight", type=float, default=0.0,
                        help="weight of an auxiliary CTC loss of the audio tokens against the transcript "
                        "over the LLM's vocabulary (0: off; at 0.5 it did not help asr-v1 and cost 30%% "
                        "of the step time)")
    parser.add_argument("--ctc-chunks", type=int, default=12, help="chunks per step that the CTC loss sees")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--stack", type=int, default=4, help="encoder frames per audio token")
    parser.add_argument("--noisy-history", type=float, default=NOISY_HISTORY_SHARE,
                        help="share of multi-turn sessions whose earlier transcripts are corrupted, as the "
                        "model's own errors are at inference (training/history_noise.py)")
    parser.add_argument(
        "--drafts",
        action="store_true",
        help="put each chunk's Whisper draft (greedy, Whisper's own decoder) into the context "
        "after its audio, as inference then does (asr.speech.draft); drafts stored beside a manifest "
        "by `python -m training.drafts` are read, the rest decoded every step",
    )
    parser.add_argument(
        "--cached-drafts-only",
        action="store_true",
        help="with --drafts, train only on utterances with a cached draft to play (Whisper then decodes "
        "only the noise chunks in the step: on a GPU drafting is CPU-bound and made steps 2-3x slower)",
    )
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--no-augment", action="store_true", help="no waveform augmentation, mel warp or SpecAugment"
    )
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (saves memory)")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--time-limit", type=float, default=0, help="stop and save after this many minutes")
    parser.add_argument("--validate", nargs="+", default=[], help="manifests for validation WER at the end "
                        "(never trained on: real speech, and held-out synthetic speech to see memorisation)")
    parser.add_argument("--validate-limit", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_optimizer(projector: torch.nn.Module, ctc_head: torch.nn.Module, lora_params: list,
                   args: argparse.Namespace) -> torch.optim.AdamW:
    """AdamW over two parameter groups: projector and CTC head at ``--lr``, then LoRA (``LORA_GROUP`` of
    ``training.schedule``) at ``--lr`` times ``--lora-lr-scale``."""
    return torch.optim.AdamW(
        [
            {"params": list(projector.parameters()) + list(ctc_head.parameters()), "lr": args.lr},
            {"params": lora_params, "lr": args.lr * args.lora_lr_scale},
        ],
        weight_decay=0.01,
    )


def train_step(
    batch: list,
    models: tuple,
    ctc_head: VocabularyCtcHead,
    optimizer: torch.optim.Optimizer,
    lora_params: list,
    args: argparse.Namespace,
    augment_features,
    device: torch.device,
) -> tuple[float, float]:
    """One optimiser step on a batch of sessions; ``models``: (tokenizer, prompt, llm, encoder, projector).
    Returns the LM loss and the CTC loss (0 when ``--ctc-weight`` is 0)."""
    tokenizer, prompt, llm, encoder, projector = models
    (embeds, labels, mask), (audio, audio_lengths, texts) = session_batch(
        batch, tokenizer, prompt, llm, encoder, projector, None if args.no_augment else augment_features)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        lm_loss = llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    # logits over the whole vocabulary are large: a few chunks a step, with clean transcripts
    ctc = [i for i, turn in enumerate(t for s in batch for t in s) if turn[2]][: args.ctc_chunks]
    ctc_loss = (ctc_head(audio[ctc], audio_lengths[ctc], [texts[i] for i in ctc]) if args.ctc_weight
                else torch.zeros((), device=device))
    (lm_loss + args.ctc_weight * ctc_loss).backward()
    torch.nn.utils.clip_grad_norm_(list(projector.parameters()) + lora_params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return lm_loss.item(), ctc_loss.item()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    tokenizer, llm, encoder, projector, projector_config, lora_config, lora_params = build_models(
        args, device
    )
    prompt = PromptIds.from_tokenizer(tokenizer)
    models = (tokenizer, prompt, llm, encoder, projector)
    start_step = 0
    if args.resume:
        adapter = SpeechAdapter.load(args.resume)
        projector.load_state_dict(adapter.projector)
        llm.load_state_dict({k: v.to(device) for k, v in adapter.lora.items()}, strict=False)
        start_step = adapter.info.get("steps", 0)
    utterances = [u for source in args.data for u in read_corpus(source)]
    log.info(
        "training on %d utterances (%.1f h)", len(utterances), sum(u.duration for u in utterances) / 3600
    )
    drafts = DraftCache.for_sources(args.data, whisper_digest(args.whisper)) if args.drafts else None
    if drafts is not None:
        log.info("cached drafts: %d utterances of %d (the rest drafted every step)", len(drafts.entries),
                 len(utterances))
        if args.cached_drafts_only:
            utterances = with_cached_drafts(utterances, drafts, augment=not args.no_augment)
            log.info("training on the %d utterances with a cached draft to play (%.1f h)", len(utterances),
                     sum(u.duration for u in utterances) / 3600)
    loader = DataLoader(
        SessionStream(
            utterances, not args.no_augment, args.seed + start_step, args.batch, args.noisy_history,
            drafts or None,
        ),
        batch_size=None,
        collate_fn=keep_batch,
        num_workers=args.workers,
        prefetch_factor=4 if args.workers else None,
    )
    ctc_head = VocabularyCtcHead(llm.get_input_embeddings().weight.detach()).to(device)
    optimizer = make_optimizer(projector, ctc_head, lora_params, args)
    schedule = Schedule(optimizer, args.steps, args.time_limit, args.lora_start)
    out = Path(args.out)

    def save(step: int, extra: dict) -> None:
        info = {
            "steps": step,
            "data": args.data,
            "lora_rank": args.lora_rank,
            "seconds": round(time.time() - t0),
            "drafts": args.drafts,
            "cached_drafts": len(drafts.entries) if drafts is not None else 0,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            **extra,
        }
        SpeechAdapter(projector_config, lora_config, projector.state_dict(), lora_state_dict(llm), info).save(
            out
        )

    warp, masks = MelWarp(), SpecAugment()

    def augment_features(features: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        return masks(warp(features, lengths), lengths)

    t0, step, running, waited = time.time(), start_step, [], 0.0
    llm.train()
    fetched = time.time()
    for batch in loader:
        waited += time.time() - fetched
        lr = schedule.set_lr(step - start_step, time.time() - t0)
        running.append(
            train_step(batch, models, ctc_head, optimizer, lora_params, args, augment_features, device)
        )
        step += 1
        if step % 50 == 0:
            lm, ctc = (sum(column) / len(running) for column in zip(*running))
            log.info("step %d loss %.3f ctc %.3f lr %.2e %.1f s (%.1f s waiting for data)", step, lm, ctc, lr,
                     time.time() - t0, waited)
            running = []
        over_time = args.time_limit and time.time() - t0 > args.time_limit * 60
        if step % args.save_every == 0 or step >= start_step + args.steps or over_time:
            save(step, {})
        if step >= start_step + args.steps or over_time:
            break
        fetched = time.time()
    llm.eval()
    result = {}
    for manifest in args.validate:
        result[manifest] = validate(manifest, args.validate_limit, tokenizer, prompt, llm, encoder, projector)
        log.info("validation %s %s", manifest, json.dumps(result[manifest]))
    save(step, {"validation": result})


if __name__ == "__main__":
    main()
