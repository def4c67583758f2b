"""Where a transcription's time goes: wall seconds per pipeline stage, summed over calls.

``StageClock`` wraps the functions that carry each stage (``STAGES``) for the time of a ``with`` block
and restores them after. A call made inside another timed call counts for the outer stage only (an
engine ``append`` inside a draft check is the check's prefill), so the stages add up to at most the
wall time; the remainder (segmenting, tokenising, Python between calls) is ``other``.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections import defaultdict

# stage -> (module, class, method) whose calls it times
STAGES: dict[str, tuple[str, str, str]] = {
    "log-mel": ("asr.speech.encoder", "AudioEncoder", "log_mel"),
    "encode": ("asr.speech.encoder", "Ct2Encoder", "__call__"),
    "draft": ("asr.speech.draft", "Ct2Drafter", "__call__"),
    "distance cap": ("asr.llm.engine", "LLMEngine", "cap_distances"),
    "prefill": ("asr.llm.engine", "LLMEngine", "append"),
    "gate scoring": ("asr.llm.engine", "LLMEngine", "score_continuations"),
    "draft check": ("asr.llm.engine", "LLMEngine", "accept_proposal"),
    "decode": ("asr.llm.engine", "LLMEngine", "generate"),
}


class StageClock:
    """``with StageClock() as clock: ...`` then ``clock.seconds``: stage -> wall seconds in it."""

    def __init__(self, stages: dict[str, tuple[str, str, str]] | None = None) -> None:
        self.stages = STAGES if stages is None else stages  # stage -> what it times (``STAGES`` by default)
        self.seconds: dict[str, float] = defaultdict(float)
        self._active = False  # inside a timed call: nested ones count for it
        self._originals: list[tuple[type, str, object]] = []

    def _timed(self, stage: str, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            if self._active:
                return method(*args, **kwargs)
            self._active, started = True, time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started
                self._active = False

        return timed

    def __enter__(self) -> StageClock:
        for stage, (module, name, method) in self.stages.items():
            owner = getattr(importlib.import_module(module), name)
            original = owner.__dict__[method]
            self._originals.append((owner, method, original))
            setattr(owner, method, self._timed(stage, original))
        return self

    def __exit__(self, *exc) -> None:
        for owner, method, original in reversed(self._originals):
            setattr(owner, method, original)
        self._originals.clear()

    def breakdown(self, total_seconds: float) -> dict[str, float]:
        """Seconds per stage in ``self.stages`` order, plus ``other``: the rest of ``total_seconds``."""
        stages = {stage: round(self.seconds.get(stage, 0.0), 3) for stage in self.stages}
        stages["other"] = round(max(0.0, total_seconds - sum(self.seconds.values())), 3)
        return stages
