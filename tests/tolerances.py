"""One closeness check for the whole suite: tolerances by dtype plus a relative-RMS bound."""

import torch

TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-8, rms=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5, rms=1e-5),
    torch.float16: dict(atol=5e-3, rtol=5e-3, rms=3e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2, rms=1e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """Element-wise closeness at the tolerance of ``dtype`` (default: actual's), NaN never passes."""
    tol = TOLERANCES[dtype or actual.dtype]
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert not torch.isnan(actual).any(), "NaN in result (unwritten or invalid output)"
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"])
    rel_rms = (actual - expected).norm() / expected.norm().clamp(min=1e-30)
    assert rel_rms <= tol["rms"], f"relative RMS error {rel_rms:.2e} above {tol['rms']:.0e}"
