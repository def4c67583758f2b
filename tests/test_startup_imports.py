"""Start-up stays light: loading the LLM and its tokenizer imports neither sympy nor torch.distributed
(2-3 s of a 2-core CPU start-up), and the directly built tokenizer is the one AutoTokenizer gives."""

import subprocess
import sys
from pathlib import Path

import pytest

from asr.llm.embedded import embedded_llm_dir
from asr.llm.loader import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llm_dir():
    try:
        return embedded_llm_dir()
    except Exception as error:  # the embedded model's package is not installed
        pytest.skip(f"no embedded LLM: {error}")


def test_building_the_model_and_tokenizer_imports_no_sympy(llm_dir):
    code = f"""
import sys, torch
from pathlib import Path
from asr.llm.loader import load_tokenizer, read_model_config
from asr.llm.model import CausalLM
config, _ = read_model_config(Path({str(llm_dir)!r}))
with torch.device("meta"):
    CausalLM(config, torch.ones(config.head_dim // 2))
load_tokenizer(Path({str(llm_dir)!r}))
heavy = [name for name in ("sympy", "torch.distributed.tensor") if name in sys.modules]
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_tokenizer_matches_auto_tokenizer(llm_dir):
    from transformers import AutoTokenizer

    ours, auto = load_tokenizer(llm_dir), AutoTokenizer.from_pretrained(str(llm_dir), local_files_only=True)
    text = "Mister Hale said, 'I couldn't help it' <|im_end|> 12 ok."
    assert ours(text, add_special_tokens=False).input_ids == auto(text, add_special_tokens=False).input_ids
    ids = auto(text).input_ids
    assert ours.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True)
    chat = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(chat, add_generation_prompt=True) == auto.apply_chat_template(
        chat, add_generation_prompt=True)
    assert ours.all_special_ids == auto.all_special_ids and ours.eos_token_id == auto.eos_token_id
