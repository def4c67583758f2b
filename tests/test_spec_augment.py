import torch

from training.spec_augment import SpecAugment


def test_masks_stay_inside_each_chunk_and_use_its_mean():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 80, 3000, generator=gen)
    lengths = [1200, 3000, 10]
    out = SpecAugment(prob=1.0)(features, lengths, torch.Generator().manual_seed(1))
    assert out.shape == features.shape
    assert not torch.equal(out, features)
    for index, length in enumerate(lengths):
        # padding past the chunk's audio is untouched
        assert torch.equal(out[index, :, length:], features[index, :, length:])
        changed = out[index, :, :length] != features[index, :, :length]
        if changed.any():
            fill = features[index, :, :length].mean()
            assert torch.allclose(out[index, :, :length][changed], fill.expand(int(changed.sum())))
    # masked share is modest: under 40% of the valid cells of the long chunk
    assert (out[1] != features[1]).float().mean() < 0.4


def test_probability_zero_is_identity():
    features = torch.randn(2, 80, 3000)
    assert torch.equal(SpecAugment(prob=0.0)(features, [3000, 100]), features)
