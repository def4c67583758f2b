"""``asr serve`` as a process: it prints where it listens, serves a stream, and on SIGTERM sends the
open stream its finals and ``done`` before exiting 0."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import websockets

from asr.live.client import pcm_s16le
from tests.test_live_server import SR, START, speech  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_sigterm_flushes_finals_then_exits(speech):  # noqa: F811
    audio, _ = speech
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", "0", "--device", "cpu",
                               "--max-session-seconds", "120", "--workers", "1"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = ""
        while "ws://" not in line:
            line = server.stdout.readline()
            assert line or server.poll() is None, "asr serve exited before listening"
        url = re.search(r"(ws://\S+/ws)", line).group(1)
        assert "(1 model worker;" in line, line

        async def talk():
            messages = []
            async with websockets.connect(url) as ws:
                await ws.send(START)
                messages.append(json.loads(await ws.recv()))
                await ws.send(pcm_s16le(audio[SR * 13 : SR * 16]))  # the short utterance, no stop
                await asyncio.sleep(0.5)
                server.send_signal(signal.SIGTERM)
                async for raw in ws:
                    messages.append(json.loads(raw))
                return messages, ws.close_code

        messages, code = asyncio.run(talk())
        assert server.wait(60) == 0
    finally:
        if server.poll() is None:
            server.kill()
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "ready" and "final" in kinds and kinds[-1] == "done" and code == 1001
