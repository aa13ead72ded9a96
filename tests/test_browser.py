"""The browser page, end to end, in real headless Chromium.

Chromium's fake capture device plays a WAV made from a LibriSpeech flac as the microphone
(``--use-file-for-fake-audio-capture``); the page served at ``/`` captures it with getUserMedia +
AudioWorklet, downsamples to 16 kHz s16le in the worklet, streams it over the server's WebSocket and
shows the label. The test drives the page over the Chrome DevTools Protocol (a WebSocket, with the
``websockets`` package): it opens the page, clicks #start as a user gesture, waits for estimates and
reads #label. Needs /usr/bin/chromium (Debian package ``chromium``, installed by ``setup.sh --dev``);
without it this test fails, it does not skip.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest
import soundfile as sf

from realtime.audio import load_audio
from realtime.server import ServerConfig, ServerThread, engine_factory

from .data import readers_by_gender

GENDER = {"F": "female", "M": "male"}


def _chromium() -> str:
    for name in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "",
                 shutil.which("google-chrome") or ""):
        if name and os.access(name, os.X_OK):
            return name
    raise RuntimeError("headless Chromium not found: apt-get install chromium (./setup.sh --dev does)")


class DevTools:
    """Minimal CDP client: one browser-level WebSocket, flat sessions for page targets."""

    def __init__(self, url: str):
        from websockets.sync.client import connect

        self._cm = connect(url, max_size=None, open_timeout=30)
        self.ws = self._cm.__enter__()
        self._id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        t_end = time.monotonic() + timeout
        while True:
            r = json.loads(self.ws.recv(timeout=max(0.1, t_end - time.monotonic())))
            if r.get("id") == self._id:
                if "error" in r:
                    raise RuntimeError(f"{method}: {r['error']}")
                return r.get("result", {})

    def evaluate(self, session: str, expression: str, *, gesture: bool = False):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True,
                                           "userGesture": gesture}, session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page exception: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self):
        self.ws.close()


@pytest.fixture(scope="module")
def server():
    with ServerThread(engine_factory(), ServerConfig(port=0, workers=2)) as srv:
        yield srv


@pytest.fixture
def browser(tmp_path):
    procs = []

    def launch(wav) -> DevTools:
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
               "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
               f"--use-file-for-fake-audio-capture={wav}", "--remote-debugging-port=0", "about:blank"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        url, seen = None, []
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "Chromium did not start:\n" + "".join(seen[-20:])
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep draining
        return DevTools(url)

    yield launch
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


STATE = ("JSON.stringify({label: document.querySelector('#label').textContent, "
         "p: document.querySelector('#p_female').textContent, status: document.querySelector('#status').textContent, "
         "state: document.querySelector('#status').dataset.state, n: +document.querySelector('#events').textContent, "
         "rate: document.querySelector('#rate').textContent})")


@pytest.mark.parametrize("g", ["F", "M"])
def test_page_streams_the_microphone_and_shows_the_right_gender(server, browser, tmp_path, g):
    path = readers_by_gender(2)[g][1]
    wav = tmp_path / f"{g}.wav"
    sf.write(wav, load_audio(path), 16000, subtype="PCM_16")  # Chromium's fake capture reads 16-bit WAV
    cdp = browser(wav)
    try:
        target = cdp.call("Target.createTarget", {"url": server.page_url})["targetId"]
        sid = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        t_end = time.monotonic() + 20
        while not cdp.evaluate(sid, "document.readyState === 'complete' && !!document.querySelector('#start')"):
            assert time.monotonic() < t_end, "page did not load"
            time.sleep(0.1)
        cdp.evaluate(sid, "document.querySelector('#start').click()", gesture=True)
        state, history = None, []
        t_end = time.monotonic() + 25
        while time.monotonic() < t_end:
            time.sleep(0.5)
            state = json.loads(cdp.evaluate(sid, STATE))
            history.append((state["n"], state["label"]))
            assert state["state"] != "error", state
            if state["n"] >= 16:  # 8 s of audio: the smoothed label has settled
                break
        assert state and state["n"] >= 16, (state, history[-5:])
        assert "16000 Hz" in state["rate"]
        assert state["label"] == GENDER[g], (state, history)
        p = float(state["p"])
        assert (p > 0.5) == (g == "F"), state
        # stop: the page sends {"event": "end"} and shows the server's summary
        cdp.evaluate(sid, "document.querySelector('#stop').click()", gesture=True)
        t_end = time.monotonic() + 10
        summary = "–"
        while time.monotonic() < t_end and summary == "–":
            time.sleep(0.2)
            summary = cdp.evaluate(sid, "document.querySelector('#summary').textContent")
        assert summary.startswith(GENDER[g]), summary
    finally:
        cdp.close()
