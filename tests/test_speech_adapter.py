import json

import pytest
import torch
from torch import nn

from asr.corpus import read_corpus
from asr.errors import AsrError
from asr.llm.lora import LoraConfig, add_lora, lora_state_dict, merge_lora
from asr.speech.adapter import SpeechAdapter
from asr.speech.projector import FrameStackProjector, ProjectorConfig
from asr.speech.prompt import PromptIds
from asr.speech.sessions import IGNORE, pad_sessions, session_inputs


class TinyBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(8, 8)
        self.down_proj = nn.Linear(8, 4, bias=False)
        self.other = nn.Linear(8, 8)

    def forward(self, x):
        return self.down_proj(torch.relu(self.q_proj(x) + self.other(x)))


def test_projector_stacks_frames_and_pads_the_tail():
    torch.manual_seed(0)
    projector = FrameStackProjector(ProjectorConfig(encoder_dim=6, llm_dim=10, stack=4, hidden=16))
    frames = torch.randn(2, 9, 6)
    out = projector(frames)
    assert out.shape == (2, 3, 10) and projector.num_tokens(9) == 3
    # the first token depends on frames 0-3 only
    changed = frames.clone()
    changed[:, 4:] += torch.randn(2, 5, 6)
    torch.testing.assert_close(projector(changed)[:, 0], out[:, 0])
    assert not torch.allclose(projector(changed)[:, 1], out[:, 1])


def test_lora_starts_as_identity_and_merges_exactly():
    torch.manual_seed(1)
    model = TinyBlock()
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 8)
    before = model(x)
    config = LoraConfig(rank=2, alpha=4.0, targets=("q_proj", "down_proj"))
    assert sorted(add_lora(model, config)) == ["down_proj", "q_proj"]
    torch.testing.assert_close(model(x), before)  # B starts at zero
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.normal_()
    adapted = model(x)
    assert not torch.allclose(adapted, before)
    merged = dict(base_weights)
    merge_lora(merged, lora_state_dict(model), config)
    plain = TinyBlock()
    plain.load_state_dict(merged)
    torch.testing.assert_close(plain(x), adapted, atol=1e-5, rtol=1e-5)


def test_adapter_round_trip(tmp_path):
    projector = FrameStackProjector(ProjectorConfig(encoder_dim=4, llm_dim=6, stack=2, hidden=8))
    lora = {"model.layers.0.self_attn.q_proj.lora_a": torch.randn(2, 6)}
    SpeechAdapter(projector.config, LoraConfig(rank=2), projector.state_dict(), lora, {"steps": 7}).save(
        tmp_path
    )
    loaded = SpeechAdapter.load(tmp_path)
    assert loaded.projector_config == projector.config and loaded.lora_config == LoraConfig(rank=2)
    assert loaded.info["steps"] == 7
    torch.testing.assert_close(
        loaded.lora["model.layers.0.self_attn.q_proj.lora_a"],
        lora["model.layers.0.self_attn.q_proj.lora_a"].half().float(),
    )
    with pytest.raises(AsrError, match="no speech adapter"):
        SpeechAdapter.load(tmp_path / "missing")


def test_session_labels_cover_transcripts_and_their_end_token_only():
    prompt = PromptIds(
        session_start=[1, 2],
        before_audio=[3],
        after_audio=[4, 5],
        after_transcript=[9, 10],
        end_of_turn=9,
        before_draft=[4, 6],
        after_draft=[5],
    )
    embed = nn.Embedding(20, 3)
    audio = [torch.randn(4, 3), torch.randn(2, 3)]
    embeds, labels = session_inputs(audio, [[11, 12], [13]], prompt, embed)
    # 2 + (1 + 4 + 2 + 3 + 1) + (1 + 2 + 2 + 2 + 1)
    assert embeds.shape == (21, 3) and labels.shape == (21,)
    assert [int(t) for t in labels if t != IGNORE] == [11, 12, 9, 13, 9]
    torch.testing.assert_close(embeds[3:7], audio[0])
    _, history_unlearnt = session_inputs(audio, [[11, 12], [13]], prompt, embed, supervised=[False, True])
    assert [int(t) for t in history_unlearnt if t != IGNORE] == [13, 9]
    batch_embeds, batch_labels, mask = pad_sessions([(embeds, labels), (embeds[:5], labels[:5])])
    assert batch_embeds.shape == (2, 21, 3) and mask[1].sum() == 5 and (batch_labels[1, 5:] == IGNORE).all()
    # drafts sit between the audio and the assistant turn, unlearnt; a turn without a draft id list
    # (None) keeps the plain layout
    drafted, drafted_labels = session_inputs(audio, [[11, 12], [13]], prompt, embed, draft_ids=[[15, 16], []])
    assert drafted.shape == (21 + 3 + 2 - 2 + 1, 3)
    torch.testing.assert_close(drafted[7:12], embed(torch.tensor([4, 6, 15, 16, 5])))
    assert [int(t) for t in drafted_labels if t != IGNORE] == [11, 12, 9, 13, 9]


def test_corpus_reading_manifest_and_librispeech_layout(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.jsonl").write_text(
        json.dumps({"audio": "a.flac", "text": "hi", "duration_s": 1.5}) + "\n"
    )
    rows = read_corpus(tmp_path / "m")
    assert rows[0].audio == tmp_path / "m" / "a.flac" and rows[0].duration == 1.5
    chapter = tmp_path / "ls" / "19" / "198"
    chapter.mkdir(parents=True)
    import numpy as np
    import soundfile as sf

    sf.write(chapter / "19-198-0000.flac", np.zeros(8000, dtype=np.float32), 16000)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO WORLD\n19-198-0001 MISSING AUDIO\n")
    rows = read_corpus(tmp_path / "ls")
    assert [(r.text, r.duration) for r in rows] == [("HELLO WORLD", 0.5)]
    with pytest.raises(AsrError, match="no manifest"):
        read_corpus(tmp_path / "empty-dir-that-does-not-exist")
