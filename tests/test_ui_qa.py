"""QA answers stop at a repetition loop (the speech side's detector) and ``asr qa`` ends its output
with a newline."""

from app.cli import main
from app.commands.qa import qa_loop_start
from asr.llm.config import EngineConfig, SamplingParams
from asr.llm.engine import LLMEngine
from asr.llm.qa import answer
from tests.test_qa import needs_embedded, tiny_chat_model  # noqa: F401  (fixture)


def test_qa_loop_detector_finds_a_repeated_phrase():
    phrase = [11, 12, 13, 14, 15]
    assert qa_loop_start([1, 2, 3] + phrase * 3) == 3 + len(phrase)
    assert qa_loop_start([1, 2, 3] + phrase * 2) is None


@needs_embedded
def test_answer_stops_where_the_loop_detector_says(tiny_chat_model):  # noqa: F811
    engine = LLMEngine.from_pretrained(tiny_chat_model, EngineConfig(device="cpu", max_batch=1))
    seen: list[int] = []

    def stop_after_six(token_ids):
        seen.append(len(token_ids))
        return 4 if len(token_ids) == 6 else None  # "a loop whose second copy starts at token 4"

    params = SamplingParams(max_tokens=40, ignore_eos=True)
    full = answer(engine, "The keeper was Miriam.", "Who was the keeper?", params)
    cut = answer(engine, "The keeper was Miriam.", "Who was the keeper?", params, loop_start=stop_after_six)
    assert max(seen) == 6, "generation went on after the loop was found"
    assert full.startswith(cut) and len(cut) < len(full)
    again = answer(engine, "The keeper was Miriam.", "Who was the keeper?", params)
    assert again == full  # the engine is left in a clean state


@needs_embedded
def test_qa_command_ends_with_a_newline(tiny_chat_model, tmp_path, capsys):  # noqa: F811
    doc = tmp_path / "doc.txt"
    doc.write_text("The lighthouse keeper of Port Alder was Miriam Castellanos.\n")
    assert (
        main(
            [
                "qa",
                "--doc",
                str(doc),
                "--question",
                "Who?",
                "--model",
                str(tiny_chat_model),
                "--device",
                "cpu",
                "--max-tokens",
                "5",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.endswith("\n")
