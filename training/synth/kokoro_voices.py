"""Kokoro-82M speakers: the packaged style vectors and random new speakers mixed from them.

A Kokoro voice is a style table ``[510, 1, 256]`` float32 (one row per phoneme count). A
``KokoroSpeaker`` is one voice or a weighted mix of 2-3 voices of one gender, a speaking rate and
the espeak-ng dialect used to phonemize its text; ``draw_speaker`` makes one from a seeded generator,
so every utterance of a run gets a reproducible, mostly new speaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

STYLE_SHAPE = (510, 1, 256)
NATIVE_LANGS = {"a": "en-us", "b": "en-gb"}
"""Kokoro name prefix of native English voices -> espeak-ng dialect (a: American, b: British)."""
ACCENTED_LANG = "en-us"
"""Dialect for the other voices (Spanish, French, Hindi, Italian, Japanese, Portuguese, Chinese):
they read English phonemes with their own accent."""
EXCLUDED_VOICES = frozenset({"am_santa", "em_santa", "pm_santa"})
"""Character voices (a Santa Claus impression), not everyday speakers."""
ACCENTED_SHARE = 0.15
"""Share of speakers whose main voice is accented; their other mixed-in voices are native."""
MIX_COUNT_WEIGHTS = {1: 0.3, 2: 0.45, 3: 0.25}
"""How many voices a speaker mixes."""
DIRICHLET_ALPHA = 1.5
SPEED_RANGE = (0.8, 1.25)


@dataclass(frozen=True)
class KokoroVoice:
    """name: Kokoro voice id such as ``af_heart``; lang: espeak-ng dialect; native: English native."""

    name: str
    lang: str
    native: bool

    @property
    def gender(self) -> str:
        return self.name[1]


@dataclass(frozen=True)
class KokoroSpeaker:
    """voices: mixed voice names, heaviest first; weights: their mix weights (sum 1); speed: Kokoro
    rate factor; lang: espeak-ng dialect of the main voice."""

    voices: tuple[str, ...]
    weights: tuple[float, ...]
    speed: float
    lang: str

    @property
    def name(self) -> str:
        """Identifies the speaker in a manifest, e.g. ``bf_emma.62+bf_lily.38``."""
        return "+".join(f"{v}.{round(w * 100):02d}" for v, w in zip(self.voices, self.weights))

    def style(self, styles: dict[str, np.ndarray]) -> np.ndarray:
        """[510, 1, 256] float32: the weighted sum of the voices' style tables."""
        mixed = sum(w * styles[v].astype(np.float64) for v, w in zip(self.voices, self.weights))
        return np.asarray(mixed, dtype=np.float32)


def voice_info(name: str) -> KokoroVoice:
    native = name[0] in NATIVE_LANGS
    return KokoroVoice(name, NATIVE_LANGS.get(name[0], ACCENTED_LANG), native)


def load_styles(voice_dir: Path) -> dict[str, np.ndarray]:
    """Every ``<name>.bin`` of ``voice_dir`` (raw float32, as kokoro-js ships them) -> [510, 1, 256]."""
    styles = {}
    for path in sorted(Path(voice_dir).glob("*.bin")):
        if path.stem in EXCLUDED_VOICES:
            continue
        data = np.fromfile(path, dtype=np.float32)
        if data.size != np.prod(STYLE_SHAPE):
            raise ValueError(f"{path}: {data.size} floats, expected a {STYLE_SHAPE} style table")
        styles[path.stem] = data.reshape(STYLE_SHAPE)
    if not styles:
        raise FileNotFoundError(f"no Kokoro voice .bin files in {voice_dir}: run training/setup_tts.sh")
    return styles


def draw_speaker(names: list[str] | tuple[str, ...], rng: np.random.Generator) -> KokoroSpeaker:
    """A random speaker from the available voice ``names``: mostly native, mixes within one gender."""
    voices = [voice_info(n) for n in sorted(names)]
    native = [v for v in voices if v.native]
    accented = [v for v in voices if not v.native]
    pool = accented if accented and (not native or rng.random() < ACCENTED_SHARE) else native
    main = pool[rng.integers(len(pool))]
    partners = [v for v in (native or voices) if v.gender == main.gender and v.name != main.name]
    counts = list(MIX_COUNT_WEIGHTS)
    probabilities = np.array([MIX_COUNT_WEIGHTS[c] for c in counts])
    count = min(int(rng.choice(counts, p=probabilities / probabilities.sum())), len(partners) + 1)
    chosen = [main] + [partners[i] for i in rng.choice(len(partners), count - 1, replace=False)]
    weights = np.sort(rng.dirichlet([DIRICHLET_ALPHA] * count))[::-1]
    speed = float(rng.uniform(*SPEED_RANGE))
    return KokoroSpeaker(tuple(v.name for v in chosen), tuple(round(float(w), 4) for w in weights),
                         round(speed, 3), main.lang)
