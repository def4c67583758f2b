"""Sparsity-aware fine-tuning: train an LLM (or the speech LLM) with the soft top-k page mask, so that
UNIQUE decoding's page selection keeps what the model needs.

Every attention layer runs ``attn_implementation="unique_softmask"``: each query weights the pages
outside its sink and local window by ``sigmoid((s - tau) / T)`` (s: the page score decode uses, tau:
the k-th best score). T is annealed geometrically from ``--t-start`` to ``--t-end`` over the first
``--anneal`` share of the run, toward the hard mask decode applies; each step draws its budget from
``--budgets`` (tokens), or with ``--budget-divisors`` a share of the step's sequence length, as decoding
keeps a share of its context. The loss is the plain LM loss. LoRA (``--lora-rank``) or full fine-tuning
(0).

Text: long documents of ``training.text_corpus`` (cut to ``--seq-len``, or with ``--seq-lens`` to a
length each step draws, as many sequences as keep the step's tokens), some with synthetic copy and
lookup tasks (``training.text_tasks``); saves a LoRA adapter directory (``asr.llm.lora_adapter``) that
``asr qa --model`` and ``python -m eval.longqa --model`` load, or (full) a Hugging Face directory.
Speech (``--speech-data``): sessions of ``training.train_asr`` through the same loop, or with
``--session-minutes`` long sessions of tens of chunks cut as inference cuts a recording
(``training.long_sessions``); saves a speech adapter (``asr transcribe --model``).

Every ``--eval-every`` steps (and at the start and the end): held-out LM loss and a record-lookup
probe, dense and with the hard mask (``training.softmask_eval``), into ``OUT/eval.jsonl``. ``--resume``
continues from OUT's checkpoint. Several GPUs: ``torchrun --nproc_per_node N -m training.softmask ...``
(DDP; gloo on CPUs).

    python -m training.softmask --corpus .cache/text_corpus --out runs/softmask --time-limit 10
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import asr  # noqa: F401  (registers attn_implementation="unique_softmask")
from asr.attention.config import SoftMaskConfig, UniqueConfig
from asr.attention.hf_softmask import ATTENTION_NAME, set_soft_mask, soft_mask_to_dict
from asr.llm.lora import LoraConfig, add_lora, lora_state_dict
from asr.llm.lora_adapter import LoraAdapter, model_fingerprint
from training.schedule import Schedule
from training.softmask_eval import autocast, evaluate

log = logging.getLogger("softmask")
STATE_FILE = "trainer_state.pt"  # optimizer, step, elapsed time: what --resume needs beside the weights


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output directory (adapter or model, checkpoint, logs)")
    parser.add_argument("--base", help="Hugging Face directory of the LLM (default: the embedded SmolLM2)")
    parser.add_argument("--corpus", default=".cache/text_corpus",
                        help="text corpus directory (training.text_corpus; built there if missing)")
    parser.add_argument("--speech-data", nargs="+", help="speech manifests: train the speech LLM instead")
    parser.add_argument("--speech-adapter", help="speech adapter to start from (default: a fresh one)")
    parser.add_argument("--session-minutes", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="speech: long sessions of MIN..MAX minutes, chunked as inference chunks a "
                             "recording (training.long_sessions; default: train_asr's sessions of 1-6 turns)")
    parser.add_argument("--speech-heldout", help="manifest of held-out speech for the loss evaluation")
    parser.add_argument("--whisper", help="Whisper directory (speech; default: the embedded Whisper base)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--lora-rank", type=int, default=16, help="0: full fine-tuning")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--time-limit", type=float, default=0, help="minutes; stop and save then")
    parser.add_argument("--seq-len", type=int, default=8192, help="tokens per text sequence")
    parser.add_argument("--seq-lens", type=int, nargs="+",
                        help="text: sequence lengths each step draws one of (default: --seq-len); a step "
                             "holds the tokens of --batch sequences of the longest")
    parser.add_argument("--batch", type=int, default=1, help="sequences (or sessions) per step and process")
    parser.add_argument("--budgets", type=int, nargs="+", default=[512, 1024],
                        help="token budgets; each step draws one")
    parser.add_argument("--budget-divisors", type=int, nargs="+",
                        help="instead of --budgets: budget = the step's sequence length / one of these")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--method", default="unique", choices=["unique", "quest", "mean"])
    parser.add_argument("--offset", default="gauss", choices=["gauss", "l1"])
    parser.add_argument("--lam", type=float, default=1.0, help="weight of UNIQUE's std offset")
    parser.add_argument("--sink-pages", type=int, default=1)
    parser.add_argument("--local-pages", type=int, default=2)
    # |s - tau| on SmolLM2-135M (1k tokens of a held-out manual, budget 128): median 60, 10% below 11;
    # so T = 30 leaves most pages partly weighted and T = 0.5 is the hard mask in effect
    parser.add_argument("--t-start", type=float, default=30.0, help="mask T at the start (score units)")
    parser.add_argument("--t-end", type=float, default=0.5, help="mask T at the end of the anneal")
    parser.add_argument("--anneal", type=float, default=0.8, help="share of the run over which T anneals")
    parser.add_argument("--query-block", type=int, default=256, help="queries per attention block")
    parser.add_argument("--synthetic-share", type=float, default=0.5,
                        help="share of text sequences with a copy or lookup task")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-docs", type=int, default=8, help="held-out documents (sessions) for the loss")
    parser.add_argument("--probes", type=int, default=16, help="record lookups in held-out documents")
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (saves memory)")
    parser.add_argument("--workers", type=int, default=2, help="speech data loader workers")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def temperature(progress: float, args: argparse.Namespace) -> float:
    """T at ``progress`` (0..1): geometric from t_start to t_end over the first ``anneal`` share."""
    share = min(1.0, progress / args.anneal) if args.anneal > 0 else 1.0
    return math.exp(math.log(args.t_start) + share * (math.log(args.t_end) - math.log(args.t_start)))


def step_budget(args: argparse.Namespace, step: int, length: int) -> int:
    """The token budget of ``step``, whose sequences are ``length`` tokens long: one of ``--budgets``, or
    ``length`` over one of ``--budget-divisors``."""
    rng = random.Random(f"{args.seed}-budget-{step}")
    return length // rng.choice(args.budget_divisors) if args.budget_divisors else rng.choice(args.budgets)


def budget_range(args: argparse.Namespace) -> tuple[int, int]:
    """The smallest and largest budget at ``--seq-len`` (the held-out evaluation's length)."""
    if args.budget_divisors:
        return args.seq_len // max(args.budget_divisors), args.seq_len // min(args.budget_divisors)
    return min(args.budgets), max(args.budgets)


def sparse_config(args: argparse.Namespace, budget: int) -> UniqueConfig:
    return UniqueConfig(page_size=args.page_size, budget_tokens=budget, method=args.method,
                        offset=args.offset, lam=args.lam, sink_pages=args.sink_pages,
                        local_pages=args.local_pages)


class Distributed:
    """This process's place among ``torchrun``'s (one process, rank 0, without it)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on one (so all stop at the same step)."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value)
        return bool(value.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- text
class TextTask:
    """The LLM alone, on long documents; saves a LoRA adapter directory (or, full, an HF directory)."""

    def __init__(self, args: argparse.Namespace, place: Distributed) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from asr.llm.embedded import embedded_llm_dir
        from training.softmask_data import TextBatches, heldout_text, text_probes
        from training.text_corpus import open_corpus

        self.args, self.base = args, Path(args.base or embedded_llm_dir()).resolve()
        out = Path(args.out)
        full_checkpoint = args.resume and args.lora_rank == 0 and (out / "config.json").is_file()
        source = out if full_checkpoint else self.base
        self.tokenizer = AutoTokenizer.from_pretrained(self.base)
        lora_dtype = torch.bfloat16 if place.device.type == "cuda" and args.lora_rank else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(
            source, dtype=lora_dtype, attn_implementation=ATTENTION_NAME
        ).to(place.device)
        if args.lora_rank:
            for param in self.model.parameters():
                param.requires_grad_(False)
            self.lora_config = LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank)
            add_lora(self.model, self.lora_config)
            if args.resume and LoraAdapter.is_adapter_dir(out):
                self.model.load_state_dict(
                    {k: v.to(place.device) for k, v in LoraAdapter.load(out).weights.items()}, strict=False
                )
        corpus = open_corpus(args.corpus, self.tokenizer) if place.main else None
        place.barrier()  # the main process builds a missing corpus once; the others then read it
        corpus = corpus or open_corpus(args.corpus, self.tokenizer)
        self.stream = TextBatches(corpus, self.tokenizer, args.seq_lens or [args.seq_len], args.batch,
                                  args.synthetic_share, args.seed + self.resumed_step(), place.rank)
        self.heldout = heldout_text(corpus, args.seq_len, args.eval_docs, place.device)
        self.probes = text_probes(corpus, self.tokenizer, args.seq_len, args.probes, args.seed)

    def resumed_step(self) -> int:
        state = Path(self.args.out) / STATE_FILE
        return torch.load(state)["step"] if self.args.resume and state.is_file() else 0

    def save(self, info: dict) -> None:
        out = Path(self.args.out)
        if self.args.lora_rank:
            base = {"path": str(self.base), "fingerprint": model_fingerprint(self.base)}
            LoraAdapter(self.lora_config, lora_state_dict(self.model), base, info).save(out)
        else:
            self.model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            (out / "softmask_info.json").write_text(json.dumps(info, indent=1))


# ----------------------------------------------------------------------------------------- speech
class SpeechTask:
    """The speech LLM (frozen encoder and projector, LoRA on the LLM) on speech sessions; saves a
    speech adapter."""

    def __init__(self, args: argparse.Namespace, place: Distributed) -> None:
        from asr.corpus import read_corpus
        from asr.speech.adapter import SpeechAdapter
        from asr.speech.prompt import PromptIds
        from training.long_sessions import LongSessionConfig, LongSessionStream
        from training.softmask_data import SpeechBatches, speech_inputs
        from training.train_asr import SessionStream, build_models

        self.args = args
        out = Path(args.out)
        start = out if args.resume and (out / "adapter.json").is_file() else args.speech_adapter
        self.start = SpeechAdapter.load(start) if start else None
        stack = self.start.projector_config.stack if self.start else 4
        rank = self.start.lora_config.rank if self.start else args.lora_rank
        self.drafts = bool(self.start and self.start.info.get("drafts"))
        model_args = argparse.Namespace(llm=args.base, lora_rank=rank, checkpointing=False,
                                        whisper=args.whisper, drafts=self.drafts, stack=stack)
        (tokenizer, self.model, encoder, self.projector, self.projector_config, self.lora_config,
         _) = build_models(model_args, place.device, attn_implementation=ATTENTION_NAME)
        if self.start:
            self.projector.load_state_dict(self.start.projector)
            lora = {name: tensor.to(place.device) for name, tensor in self.start.lora.items()}
            self.model.load_state_dict(lora, strict=False)
        for param in self.projector.parameters():
            param.requires_grad_(False)
        models = (tokenizer, PromptIds.from_tokenizer(tokenizer), self.model, encoder, self.projector)
        utterances = [u for source in args.speech_data for u in read_corpus(source)]
        seed = args.seed + 7919 * place.rank
        if args.session_minutes:
            stream = LongSessionStream(utterances, LongSessionConfig(tuple(args.session_minutes)), seed,
                                       args.batch)
        else:
            stream = SessionStream(utterances, False, seed, args.batch)
        self.stream = SpeechBatches(stream, models, args.workers)
        heldout = read_corpus(args.speech_heldout)[: args.eval_docs] if args.speech_heldout else []
        self.heldout = [speech_inputs([[(u.load(), u.text, True)]], models) for u in heldout]
        self.probes = []

    def save(self, info: dict) -> None:
        from asr.speech.adapter import SpeechAdapter

        info = {"drafts": self.drafts, **info}
        if self.args.base:
            info["llm"] = str(Path(self.args.base).resolve())
        SpeechAdapter(self.projector_config, self.lora_config, self.projector.state_dict(),
                      lora_state_dict(self.model), info).save(self.args.out)


# ------------------------------------------------------------------------------------------- loop
def train(args: argparse.Namespace) -> dict:
    """Run the recipe; returns the last evaluation (main process)."""
    place = Distributed()
    torch.manual_seed(args.seed)
    if place.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    task = SpeechTask(args, place) if args.speech_data else TextTask(args, place)
    model = task.model
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    out, state_path = Path(args.out), Path(args.out) / STATE_FILE
    step, elapsed_before = 0, 0.0
    if args.resume and state_path.is_file():
        state = torch.load(state_path, map_location=place.device)
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = state["step"], state["elapsed_s"]
    wrapped = place.wrap(model)
    schedule = Schedule(optimizer, args.steps, args.time_limit, lora_start=0)
    log_path, started = out / "eval.jsonl", time.time()
    out.mkdir(parents=True, exist_ok=True)

    def elapsed() -> float:
        return elapsed_before + time.time() - started

    def info(extra: dict) -> dict:
        return {"steps": step, "seconds": round(elapsed()), "base": str(args.base or "embedded"),
                "softmask": soft_mask_to_dict(SoftMaskConfig(sparse_config(args, budget_range(args)[1]),
                                                             temperature(1.0, args), args.query_block)),
                "recipe": {k: v for k, v in vars(args).items() if k not in ("out", "resume")},
                "device": torch.cuda.get_device_name() if place.device.type == "cuda" else "cpu",
                "world": place.world, **extra}

    def checkpoint(result: dict) -> None:
        task.save(info({"eval": result}))
        torch.save({"optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed()}, state_path)

    def run_eval() -> dict:
        result = evaluate(model, task.heldout, task.probes, sparse_config(args, budget_range(args)[0]),
                          args.query_block, place.device)
        result.update(step=step, temperature=temperature(schedule.progress(step, elapsed()), args),
                      seconds=round(elapsed(), 1))
        with log_path.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
        log.info("eval %s", json.dumps(result))
        return result

    result = run_eval() if place.main else {}
    place.barrier()
    progress_bar = tqdm(total=args.steps, initial=step, desc="soft-mask", disable=not place.main)
    batches = task.stream.batches(place.device)
    wrapped.train()
    while True:
        progress = schedule.progress(step, elapsed())
        lr = schedule.set_lr(step, elapsed())
        batch = next(batches)
        budget = step_budget(args, step, batch["attention_mask"].shape[1])
        t = temperature(progress, args)
        set_soft_mask(model, SoftMaskConfig(sparse_config(args, budget), t, args.query_block))
        with autocast(place.device):
            loss = wrapped(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress_bar.update(1)
        progress_bar.set_postfix(loss=f"{loss.item():.3f}", T=f"{t:.3g}", budget=budget, lr=f"{lr:.2e}")
        done = place.any(step >= args.steps or bool(args.time_limit and elapsed() > args.time_limit * 60))
        if place.main and (step % args.eval_every == 0 or done):
            result = run_eval()
        if place.main and (step % args.save_every == 0 or done):
            checkpoint(result)
        place.barrier()
        if done:
            break
    progress_bar.close()
    place.close()
    return result


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args(argv))


if __name__ == "__main__":
    main()
