"""A private PulseAudio server with a null sink, whose monitor is a real capture device.

Recipe from ../shared/notes/virtual-microphone.md. Whatever ``VirtualMicrophone.play(path)``
plays into the sink is what PortAudio's ALSA "pulse" device records, so the whole microphone path
(PortAudio callback, ring buffer, resampling) is exercised on a machine without a sound card.

    from tests.pulse import virtual_microphone
    with virtual_microphone() as vm:          # starts pulseaudio, rescans sounddevice's devices
        mic = MicSource(device="pulse")
        mic.start()
        vm.play(flac_path)                      # paplay in the background
        ...
    # server stopped with `pactl exit` (then by its own pid if needed), devices rescanned

PortAudio enumerates devices once, when sounddevice is imported. The helper therefore calls
``sd._terminate(); sd._initialize()`` after the server is up and again after it is gone (checked:
a process that imported sounddevice before the server started sees no devices until then, and sees
"pulse" and "default" after). No stream may be open across those calls.

A missing ``pulseaudio``/``pactl``/``paplay`` raises ``RuntimeError`` so tests fail, not skip.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["virtual_microphone", "VirtualMicrophone", "require_pulseaudio"]

_TOOLS = ("pulseaudio", "pactl", "paplay")
_INSTALL_HINT = "apt-get install -y pulseaudio pulseaudio-utils libasound2-plugins libportaudio2"


def require_pulseaudio() -> None:
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"virtual microphone needs {', '.join(missing)} on PATH: {_INSTALL_HINT}")


def _rescan_sounddevice() -> None:
    sd = sys.modules.get("sounddevice")
    if sd is None:
        return  # not imported yet: it will enumerate when it is
    sd._terminate()
    sd._initialize()


@dataclass
class VirtualMicrophone:
    runtime_dir: Path
    env: dict
    sink: str
    pid: int | None = None
    device: str = "pulse"  # the PortAudio/ALSA input device name that captures the sink's monitor
    warm_up_seconds: float | None = None
    _players: list = field(default_factory=list)

    @property
    def source(self) -> str:
        return f"{self.sink}.monitor"

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10,
                              check=check)

    def play(self, path, *, wait: bool = False) -> subprocess.Popen:
        """Play an audio file (anything libsndfile reads) into the sink with paplay."""
        proc = subprocess.Popen(["paplay", f"--device={self.sink}", str(path)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._players.append(proc)
        if wait:
            _, err = proc.communicate(timeout=120)
            if proc.returncode:
                raise RuntimeError(f"paplay failed ({proc.returncode}): {err.decode(errors='replace')}")
        return proc

    def stop_players(self) -> None:
        for proc in self._players:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            if proc.stderr is not None:
                proc.stderr.close()
        self._players.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); check /proc state where available
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def _warm_up(device: str, timeout: float = 10.0) -> float:
    import threading

    import sounddevice as sd

    got = threading.Event()
    t0 = time.monotonic()
    with sd.InputStream(device=device, samplerate=16000, channels=1, blocksize=800,
                        callback=lambda *a: got.set()):
        if not got.wait(timeout):
            raise RuntimeError(f"virtual microphone {device!r} delivered no audio in {timeout} s")
    return time.monotonic() - t0


@contextlib.contextmanager
def virtual_microphone(sink: str = "virt", start_timeout: float = 10.0, warm_up: bool = True):
    """Start a private PulseAudio server; yield a :class:`VirtualMicrophone`; stop it.

    ``warm_up``: open one throw-away capture stream and wait for its first block. Measured here,
    the first PortAudio capture stream of a process (after each device rescan) delivers nothing
    for ~2.05 s, later ones start after one block (~0.1 s); warming up once makes a test's own
    stream start promptly, so audio played right after ``start()`` is captured from its start.
    The time it took is in ``vm.warm_up_seconds``.
    """
    require_pulseaudio()
    runtime_dir = Path(tempfile.mkdtemp(prefix="pulse-vm-"))
    saved = {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "PULSE_SERVER", "PULSE_RUNTIME_PATH")}
    env = dict(os.environ)
    env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    env.pop("PULSE_SERVER", None)
    env.pop("PULSE_RUNTIME_PATH", None)
    # in-process clients (ALSA's pulse plugin inside PortAudio) read these from our environment
    os.environ["XDG_RUNTIME_DIR"] = str(runtime_dir)
    os.environ.pop("PULSE_SERVER", None)
    os.environ.pop("PULSE_RUNTIME_PATH", None)
    vm = VirtualMicrophone(runtime_dir=runtime_dir, env=env, sink=sink)
    started = False
    try:
        res = subprocess.run(
            ["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n",
             "--load=module-native-protocol-unix", f"--load=module-null-sink sink_name={sink}"],
            env=env, capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"pulseaudio failed to start (rc {res.returncode}): {res.stderr.strip()}")
        started = True
        deadline = time.monotonic() + start_timeout
        while vm.pactl("info", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("pulseaudio started but `pactl info` does not answer")
            time.sleep(0.05)
        pid_file = runtime_dir / "pulse" / "pid"
        if pid_file.is_file():
            with contextlib.suppress(ValueError):
                vm.pid = int(pid_file.read_text().strip())
        vm.pactl("set-default-sink", sink)
        vm.pactl("set-default-source", vm.source)
        _rescan_sounddevice()
        if warm_up:
            vm.warm_up_seconds = _warm_up(vm.device)
        yield vm
    finally:
        vm.stop_players()
        if started:
            vm.pactl("exit", check=False)
            if vm.pid is not None:
                deadline = time.monotonic() + 5.0
                while _alive(vm.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _alive(vm.pid):  # our own server, by its pid
                    os.kill(vm.pid, signal.SIGTERM)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        with contextlib.suppress(Exception):
            _rescan_sounddevice()
        shutil.rmtree(runtime_dir, ignore_errors=True)
