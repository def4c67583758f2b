import torch

from training.mel_warp import MelWarp


def test_factor_one_is_identity_and_probability_zero_too():
    features = torch.randn(2, 80, 50)
    assert torch.allclose(MelWarp(prob=1.0, max_warp=0.0)(features, [50, 50]), features)
    assert torch.equal(MelWarp(prob=0.0)(features, [50, 50]), features)


def test_a_peak_moves_up_when_stretched_and_down_when_squeezed():
    """A formant-like peak at bin 40 lands near 40 x factor (the warp stretches the spectrum)."""
    features = torch.zeros(64, 80, 5)
    features[:, 40, :] = 1.0
    gen = torch.Generator().manual_seed(0)
    out = MelWarp(prob=1.0, max_warp=0.2)(features, [5] * 64, gen)
    gen = torch.Generator().manual_seed(0)
    torch.rand(64, generator=gen)  # the draw of which chunks warp
    factors = 1 + (2 * torch.rand(64, generator=gen) - 1) * 0.2
    peaks = (out[:, :, 0] * torch.arange(80)).sum(1) / out[:, :, 0].sum(1)
    assert torch.allclose(peaks, 40 * factors, atol=0.6)
    assert (peaks > 41).any() and (peaks < 39).any()


def test_flat_padding_stays_flat():
    features = torch.full((3, 80, 20), -1.5)
    features[:, :, :8] = torch.randn(3, 80, 8)
    out = MelWarp(prob=1.0)(features, [8, 8, 8], torch.Generator().manual_seed(2))
    assert torch.allclose(out[:, :, 8:], torch.full((3, 80, 12), -1.5))
