"""Where a recording holds speech: Silero VAD's speech probability per 32-ms frame.

The model is the one the ``silero-vad`` package ships (TorchScript, 2 MB, run by torch on the CPU);
faster-whisper filters with the same network. Two things around it make it fit long recordings:

- level: the audio is brought to one loudness (-20 dBFS RMS at the loudest frame within
  ``LEVEL_WINDOW_S`` on a frame's quieter side, never amplified by more than ``MAX_GAIN_DB``). The
  recurrent network judges a frame against what it heard before, so after a loud speaker a 40 dB
  quieter one reads as background (on the dev recordings: speech found in 28% of such a stretch
  instead of 86%);
- speed: the recording is cut into blocks, each led in by ``LEAD_FRAMES`` of the audio before it
  (whose outputs are dropped), and the blocks run as one batch: an hour costs a few seconds on two
  cores instead of a minute frame by frame. Blocks are ``BLOCK_FRAMES`` long, or ``SHORT_BLOCK_FRAMES``
  in recordings of up to ``SHORT_RECORDING_FRAMES``, where the network's steps (one per frame of a
  row, whatever the batch) dominate: a 6-s utterance takes 64 steps instead of 344, about 10x less
  time, with the same speech regions on all 102 dev utterances. Long recordings keep 10-s blocks,
  whose cut points the WER tables were measured with.
"""

from __future__ import annotations

import functools
import threading
from importlib.util import find_spec
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from asr.errors import ModelLoadError
from asr.speech.audio import SAMPLE_RATE

FRAME_SAMPLES = 512  # Silero's window at 16 kHz: one probability per 32 ms
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
BLOCK_FRAMES = 312  # ~10 s judged per batch row
SHORT_BLOCK_FRAMES = 32  # ~1 s per row in short recordings
SHORT_RECORDING_FRAMES = 1875  # 60 s
LEAD_FRAMES = 32  # ~1 s of the audio before a block, heard first so the block starts warm
BATCH_BLOCKS = 128
TARGET_RMS = 0.1  # -20 dBFS
LEVEL_WINDOW_S = 2.0
MAX_GAIN_DB = 50.0


def levelled(audio: np.ndarray) -> np.ndarray:
    """[samples] float32 -> the same audio with a slowly varying gain: the loudest 32-ms frame RMS
    within ``LEVEL_WINDOW_S`` on the quieter side of each frame (before it or after it, the frame
    and its neighbours on both) brought to ``TARGET_RMS``, the gain at most ``MAX_GAIN_DB``
    (near-silence is not blown up into noise) and interpolated between frame centres. The quieter
    side, so a quiet speaker starting within ``LEVEL_WINDOW_S`` after a loud one (or stopping before
    one) is brought up from the first word, not once the loud one has left the window: with the
    loudest frame either side, quiet FLEURS openings after a loud dev utterance read as silence and
    were dropped ("as light pollution", "to the north and within")."""
    frames = -(-len(audio) // FRAME_SAMPLES)
    padded = np.pad(audio.astype(np.float32, copy=False), (0, frames * FRAME_SAMPLES - len(audio)))
    rms = np.sqrt(np.mean(padded.reshape(frames, FRAME_SAMPLES).astype(np.float64) ** 2, axis=1))
    reach = int(LEVEL_WINDOW_S / FRAME_S)
    # each side takes the frame next to it on the other side too, so the gain never jumps up right
    # beside a loud frame (interpolated into it, it would blow that frame's edge up). loudest_over[k]:
    # the loudest of frames k - reach .. k + 1; frame i's side before is k = i, its side after
    # k = i + reach - 1
    loudest_over = np.lib.stride_tricks.sliding_window_view(np.pad(rms, reach), reach + 2).max(axis=1)
    quieter_side = np.minimum(loudest_over[:frames], loudest_over[reach - 1 : reach - 1 + frames])
    loudest = np.maximum(quieter_side, TARGET_RMS / 10 ** (MAX_GAIN_DB / 20))
    centres = (np.arange(frames) + 0.5) * FRAME_SAMPLES
    gain = np.interp(np.arange(len(audio)), centres, TARGET_RMS / loudest)
    return (audio * gain).astype(np.float32)


class FrameSpeechDetector(Protocol):
    """Anything that says where a recording holds speech, frame by frame (``SpeechDetector``; tests
    stand in a loudness rule for synthetic audio)."""

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """audio: [samples] float32 mono 16 kHz -> [ceil(samples / FRAME_SAMPLES)] float32 in [0, 1]."""
        ...


class SpeechDetector:
    """Speech probabilities of whole 16 kHz recordings (``probabilities``). One call at a time: the
    network keeps its recurrent state between frames, so calls are serialised."""

    def __init__(self, network: torch.jit.ScriptModule) -> None:
        self.network = network
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> SpeechDetector:
        """The network the ``silero-vad`` package ships. Only its file is read: importing the package
        would pull in torchaudio, which this project does not need."""
        spec = find_spec("silero_vad")
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError("speech detection needs the silero-vad package: "
                                 "pip install --no-deps silero-vad")
        path = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad.jit"
        network = torch.jit.load(str(path), map_location="cpu")
        network.eval()
        return cls(network)

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """audio: [samples] float32 mono 16 kHz -> [ceil(samples / FRAME_SAMPLES)] float32 in [0, 1],
        frame i covering samples [i * FRAME_SAMPLES, (i + 1) * FRAME_SAMPLES)."""
        frames = -(-len(audio) // FRAME_SAMPLES)
        if frames == 0:
            return np.zeros(0, np.float32)
        level = levelled(audio)
        block_frames = SHORT_BLOCK_FRAMES if frames <= SHORT_RECORDING_FRAMES else BLOCK_FRAMES
        blocks = -(-frames // block_frames)
        # each row: LEAD_FRAMES of lead-in (zeros before the start), then its block, zero-padded at the end
        block, row = block_frames * FRAME_SAMPLES, (LEAD_FRAMES + block_frames) * FRAME_SAMPLES
        signal = np.pad(level, (LEAD_FRAMES * FRAME_SAMPLES, blocks * block - len(level)))
        rows = np.stack([signal[b * block:b * block + row] for b in range(blocks)])
        out = np.empty((blocks, block_frames), np.float32)
        with self._lock, torch.inference_mode():
            for first in range(0, blocks, BATCH_BLOCKS):
                batch = torch.from_numpy(rows[first:first + BATCH_BLOCKS])
                self.network.reset_states()
                for frame in range(LEAD_FRAMES + block_frames):
                    window = batch[:, frame * FRAME_SAMPLES:(frame + 1) * FRAME_SAMPLES]
                    step = self.network(window, SAMPLE_RATE)
                    if frame >= LEAD_FRAMES:
                        out[first:first + len(batch), frame - LEAD_FRAMES] = step[:, 0].numpy()
        return out.reshape(-1)[:frames]


@functools.cache
def shared_detector() -> SpeechDetector:
    """The process's one detector (loaded on first use; its calls are serialised)."""
    return SpeechDetector.load()
