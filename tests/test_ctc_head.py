"""The auxiliary CTC head of speech-adapter training (training/ctc_head.py)."""

import torch

from training.ctc_head import VocabularyCtcHead


def _head(vocab: int = 50, hidden: int = 16) -> VocabularyCtcHead:
    torch.manual_seed(0)
    return VocabularyCtcHead(torch.nn.functional.normalize(torch.randn(vocab, hidden), dim=1) * 3)


def test_audio_that_spells_the_targets_scores_better_than_other_audio():
    head = _head()
    targets = [[3, 7, 7, 11], [5]]
    lengths = torch.tensor([9, 4])
    spelled = torch.zeros(2, 9, 16)
    for row, ids in enumerate(targets):
        for position, token in enumerate(ids):  # token, then a gap token of zeros (close to blank's 0 logit)
            spelled[row, 2 * position] = head.embedding[token] * 3
    shuffled = spelled[:, torch.randperm(9)]
    wrong = [[4, 8, 8, 12], [6]]
    assert head(spelled, lengths, targets) < head(shuffled, lengths, targets)
    assert head(spelled, lengths, targets) < head(spelled, lengths, wrong)


def test_gradients_reach_the_audio_and_the_blank_but_not_the_embedding():
    head = _head()
    audio = torch.randn(1, 6, 16, requires_grad=True)
    head(audio, torch.tensor([6]), [[1, 2]]).backward()
    assert audio.grad.abs().sum() > 0 and head.blank.grad.abs().sum() > 0
    assert not head.embedding.requires_grad


def test_silence_with_no_targets_and_too_short_audio_give_finite_losses():
    head = _head()
    loss = head(torch.randn(2, 3, 16), torch.tensor([3, 1]), [[], [1, 2, 3]])
    assert torch.isfinite(loss)
