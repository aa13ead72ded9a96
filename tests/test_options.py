"""Engine options are generated from EngineConfig: every field is an option, defaults are the dataclass's."""
import argparse
import dataclasses
from pathlib import Path

import pytest

from realtime.engine import EngineConfig
from realtime.options import add_engine_arguments, engine_argv, engine_config


def _parser():
    p = argparse.ArgumentParser()
    add_engine_arguments(p)
    return p


def test_defaults_are_engine_config_defaults():
    assert engine_config(_parser().parse_args([])) == EngineConfig()


EVERY_FIELD = ["--hop", "0.24", "--vad", "3", "--first-window", "1.0", "--min-new-speech", "0.2",
               "--speech-fraction", "0.3", "--reset-after", "2.5", "--forget", "3", "--hysteresis", "0.05",
               "--no-speech-only", "--level-range", "-50", "-10", "--no-voice-opinion", "--live-voice"]


def test_every_field_has_an_option_that_reaches_the_config():
    cfg = engine_config(_parser().parse_args(EVERY_FIELD))
    changed = {f.name for f in dataclasses.fields(EngineConfig)
               if getattr(cfg, f.name) != getattr(EngineConfig(), f.name)}
    assert changed == {f.name for f in dataclasses.fields(EngineConfig)}
    assert cfg.level_range_dbfs == (-50.0, -10.0) and cfg.speech_only is False and cfg.vad_aggressiveness == 3


def test_a_bad_value_is_refused_by_the_config():
    with pytest.raises(ValueError, match="multiple of 20 ms"):
        engine_config(_parser().parse_args(["--hop", "0.33"]))
    with pytest.raises(SystemExit):
        _parser().parse_args(["--vad", "5"])


def test_engine_argv_reads_back_as_the_same_config():
    """What the benchmark hands its child processes: the config as options, read back unchanged."""
    changed = engine_config(_parser().parse_args(EVERY_FIELD))
    argv = engine_argv(changed, Path("bundle"))
    args = _parser().parse_args(argv)
    assert engine_config(args) == changed and args.models == Path("bundle")
    assert engine_argv(EngineConfig()) == []  # defaults need no words
    flipped = dataclasses.replace(EngineConfig(), speech_only=False, hop_s=0.3)
    assert engine_argv(flipped) == ["--hop", "0.3", "--no-speech-only"]
    assert engine_config(_parser().parse_args(engine_argv(flipped))) == flipped
