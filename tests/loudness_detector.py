"""A stand-in for the Silero speech detector in plumbing tests whose audio is synthetic (tones, noise):
Silero rightly hears no speech in it, so those tests would never reach the model. Here a frame is
speech exactly when it is louder than ``-40 dBFS``."""

import numpy as np

from asr.speech.segmenter import frame_energy_db
from asr.speech.speech_detector import FRAME_SAMPLES

LOUD_DB = -40.0


class LoudnessDetector:
    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """[samples] float32 -> [ceil(samples / FRAME_SAMPLES)] 1.0 for loud frames, else 0.0."""
        return (frame_energy_db(audio, FRAME_SAMPLES) > LOUD_DB).astype(np.float32)
