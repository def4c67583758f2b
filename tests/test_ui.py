"""``asr ui`` end to end: the Gradio app on loopback driven through ``gradio_client`` (transcription
with downloads and speed figures, limits, streamed QA) and once in headless chromium."""

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.normalize import error_rates
from tests.browser import Chromium, find_chromium

pytestmark = pytest.mark.slow
DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_dev"
UTTERANCE = "ls-test-other-1688-142285-0002"  # 2.8 s: "you don't mean that you thought me so silly"
SR = 16000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory):
    manifest = DEV / "manifest.jsonl"
    if not manifest.exists():
        pytest.skip(f"the shared speech dev set is absent ({manifest})")
    from asr.speech.audio import load_audio

    row = next(r for r in map(json.loads, manifest.read_text().splitlines()) if r["id"] == UTTERANCE)
    path = tmp_path_factory.mktemp("ui") / "speech.wav"
    sf.write(path, load_audio(DEV / row["audio"]), SR, subtype="PCM_16")
    return path, row["text"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    from app.ui import UiBackend, UiLimits, build_app

    backend = UiBackend.load(
        device="cpu", limits=UiLimits(max_upload_mb=5, max_audio_s=60, max_answer_tokens=64)
    )
    app = build_app(backend).queue()
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, share=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_transcribe_through_gradio_client(ui, speech_file):
    from gradio_client import Client, handle_file

    path, reference = speech_file
    client = Client(ui, verbose=False)
    text, table, files, speed = client.predict(handle_file(str(path)), "unique", 1024, api_name="/transcribe")
    assert text.startswith("[00:00:00.") and "→" in text
    rows = table["data"]
    assert rows and rows[0][0] < 0.5 and 2.0 < rows[-1][1] <= 2.9
    wer, _ = error_rates([reference], [" ".join(r[2] for r in rows)])
    assert wer < 0.75, (wer, rows)
    assert sorted(Path(f).suffix for f in files) == [".json", ".srt", ".txt", ".vtt"]
    assert "real-time factor" in speed and "tokens/s" in speed and "KV pages read per step" in speed


def test_limits_give_clear_messages(ui, tmp_path):
    from gradio_client import Client, handle_file

    long_file = tmp_path / "long.wav"
    sf.write(long_file, np.zeros(61 * SR, np.float32), SR, subtype="PCM_16")
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    client = Client(ui, verbose=False)
    for path, message in [(long_file, "above the 1-minute limit"), (not_audio, "not audio")]:
        with pytest.raises(Exception, match=message):
            client.predict(handle_file(str(path)), "dense", 1024, api_name="/transcribe")


def test_document_qa_streams_and_stops(ui):
    from gradio_client import Client

    client = Client(ui, verbose=False)
    document = "The lighthouse keeper of Port Alder was Miriam Castellanos. " * 10
    job = client.submit(
        document, None, "Who kept the lighthouse of Port Alder?", "dense", 1024, 64, api_name="/answer"
    )
    outputs = job.result(timeout=180) and job.outputs()
    assert outputs and outputs[-1].strip()
    assert all(
        b.startswith(a[: len(a) - 8]) for a, b in zip(outputs[:-2], outputs[1:-1])
    )  # it grew as it streamed


@pytest.mark.skipif(find_chromium() is None, reason="Debian chromium is not installed")
def test_page_in_chromium(ui, speech_file, tmp_path):
    path, reference = speech_file
    browser = Chromium(tmp_path / "profile")
    try:
        browser.open(ui)
        browser.wait_for("document.querySelector('input[type=file]') !== null", 60)
        document = browser.call("DOM.getDocument", depth=-1, pierce=True)
        node = browser.call(
            "DOM.querySelector", nodeId=document["root"]["nodeId"], selector="input[type=file]"
        )
        browser.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(path)])
        browser.wait_for(
            "document.querySelector('audio') !== null || document.body.innerText.includes('speech.wav')", 30
        )
        time.sleep(1.0)
        browser.evaluate("document.getElementById('transcribe-button').click()", gesture=True)
        text = browser.wait_for("(document.querySelector('#transcript textarea') || {}).value", 180)
        shot = browser.screenshot(tmp_path / "ui.png")
    finally:
        browser.close()
    assert text.startswith("[00:00:00.")
    wer, _ = error_rates([reference], [text.split("] ", 1)[1]])
    assert wer < 0.75, (wer, text)
    assert shot.stat().st_size > 10_000
