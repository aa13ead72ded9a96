"""Screenshots for the README, taken from the real thing: ``python docs/make_screenshots.py``.

* docs/img/console.svg (+ .png): the live console (``realtime.sinks.ConsoleSink``, rich) as it draws the
  engine's event for a LibriSpeech reader mid-utterance, recorded by rich and saved as SVG;
* docs/img/browser.png: the page served by ``python -m realtime serve`` in headless Chromium, its fake
  microphone playing the same reader (the setup of tests/test_browser.py).

Needs /usr/bin/chromium (``./setup.sh --dev``) and LibriSpeech under $VOICEGENDER_DATA or ../shared/data.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "docs" / "img"


def console_svg(path: Path) -> Path:
    from rich.console import Console

    from realtime import Engine
    from realtime.sinks import ConsoleSink

    events = list(Engine().run(path))
    ev = next(e for e in events[12:] if e.window_p_female is not None and e.label == "female")
    import io

    sink = ConsoleSink(console=Console(file=io.StringIO()))  # not a terminal: no Live thread; we draw one frame
    console = Console(record=True, width=108, force_terminal=True, color_system="truecolor", file=io.StringIO())
    console.print(sink._render(ev.to_dict()))  # the very panel `live` redraws for this hop
    svg = OUT / "console.svg"
    console.save_svg(str(svg), title=f"python -m realtime live  ({path.name}, t = {ev.t:.1f} s)")
    return svg


def svg_to_png(svg: Path) -> Path:
    import re

    png = svg.with_suffix(".png")
    w, h = (int(float(v)) + 1 for v in re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg.read_text()).groups())
    size = (w, h)
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", svg.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return png


def _chromium() -> str:
    from tests.test_browser import _chromium as find

    return find()


def browser_png(path: Path) -> Path:
    import base64
    import json
    import re
    import threading

    import soundfile as sf

    from realtime.audio import load_audio
    from realtime.server import ServerConfig, ServerThread, engine_factory
    from tests.test_browser import STATE, DevTools

    with tempfile.TemporaryDirectory() as tmp, ServerThread(engine_factory(), ServerConfig(port=0, workers=1)) as srv:
        wav = Path(tmp) / "voice.wav"
        sf.write(wav, load_audio(path), 16000, subtype="PCM_16")
        proc = subprocess.Popen([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 f"--user-data-dir={tmp}/profile", "--use-fake-ui-for-media-stream",
                                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
                                 "--remote-debugging-port=0", "--window-size=900,700", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = None
            for line in proc.stderr:
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                if m:
                    url = m.group(1)
                    break
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            cdp = DevTools(url)
            target = cdp.call("Target.createTarget", {"url": srv.page_url})["targetId"]
            sid = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            cdp.call("Emulation.setDeviceMetricsOverride", {"width": 900, "height": 640, "deviceScaleFactor": 1,
                                                            "mobile": False}, sid)
            while not cdp.evaluate(sid, "document.readyState === 'complete' && !!document.querySelector('#start')"):
                time.sleep(0.1)
            cdp.evaluate(sid, "document.querySelector('#start').click()", gesture=True)
            t_end = time.monotonic() + 30
            while time.monotonic() < t_end:
                time.sleep(0.5)
                state = json.loads(cdp.evaluate(sid, STATE))
                if state["n"] >= 16 and state["label"] in ("female", "male"):
                    break
            shot = cdp.call("Page.captureScreenshot", {"format": "png"}, sid)
            png = OUT / "browser.png"
            png.write_bytes(base64.b64decode(shot["data"]))
            cdp.close()
            return png
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> int:
    from tests.data import readers_by_gender

    path = readers_by_gender(1)["F"][0]
    svg = console_svg(path)
    print(svg, svg_to_png(svg))
    print(browser_png(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
