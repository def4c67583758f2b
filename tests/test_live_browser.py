"""The browser page end to end: headless chromium with a fake microphone playing real speech, the
page's AudioWorklet capture and downsampling, the live server, the captions on the page."""

import json
import time

import numpy as np
import pytest
import soundfile as sf

from asr.normalize import error_rates
from tests.browser import Chromium, find_chromium
from tests.test_live_server import MAX_SECONDS, SR, ServerThread, live_model, speech  # noqa: F401  (fixtures)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_chromium() is None,
        reason="Debian chromium is not installed (scripts/setup.sh installs it where apt is available)",
    ),
]


def test_page_captions_a_fake_microphone(live_model, speech, tmp_path):  # noqa: F811
    from asr.live.server import ServerConfig
    from asr.live.stream import StreamConfig

    audio, reference = speech
    wav = tmp_path / "speech.wav"
    lead = np.zeros(SR // 2, np.float32)  # the page starts capturing a moment after the file starts
    sf.write(wav, np.concatenate([lead, audio, np.zeros(2 * SR, np.float32)]), SR, subtype="PCM_16")
    server = ServerThread(live_model, ServerConfig(port=0, stream=StreamConfig(max_seconds=MAX_SECONDS)))
    browser = Chromium(
        tmp_path / "profile",
        [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop",
        ],
    )
    try:
        browser.open(f"http://127.0.0.1:{server.server.port}/")
        browser.evaluate("document.getElementById('start').click()", gesture=True)
        browser.wait_for("document.getElementById('stop').disabled === false", 20)
        time.sleep(len(audio) / SR + 1.0)
        browser.evaluate("document.getElementById('stop').click()", gesture=True)
        browser.wait_for("window.liveState.done", 120)
        page = json.loads(
            browser.evaluate(
                "JSON.stringify({text: document.getElementById('finals').innerText, latency: "
                "document.getElementById('latency').innerText, partials: liveState.partials, "
                "errors: liveState.errors,"
                " download: !document.getElementById('download').disabled})"
            )
        )
        shot = browser.screenshot(tmp_path / "live.png")
    finally:
        browser.close()
        server.stop()
    assert not page["errors"], page
    wer, _ = error_rates([reference], [page["text"]])
    assert wer < 0.75, (wer, page["text"])
    assert page["latency"].startswith("latency: ") and " s " in page["latency"] and page["download"]
    assert page["partials"] >= 3  # Whisper drafts of the open chunk, about once a second
    assert shot.stat().st_size > 10_000
