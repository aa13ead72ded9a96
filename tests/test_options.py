"""Engine options are generated from EngineConfig: every field is an option, defaults are the dataclass's."""
import argparse
import dataclasses

import pytest

from realtime.engine import EngineConfig
from realtime.options import add_engine_arguments, engine_config


def _parser():
    p = argparse.ArgumentParser()
    add_engine_arguments(p)
    return p


def test_defaults_are_engine_config_defaults():
    assert engine_config(_parser().parse_args([])) == EngineConfig()


def test_every_field_has_an_option_that_reaches_the_config():
    args = _parser().parse_args(["--hop", "0.24", "--vad", "3", "--first-window", "1.0", "--min-new-speech", "0.2",
                                 "--speech-fraction", "0.3", "--reset-after", "2.5", "--forget", "3",
                                 "--hysteresis", "0.05", "--no-speech-only", "--level-range", "-50", "-10"])
    cfg = engine_config(args)
    changed = {f.name for f in dataclasses.fields(EngineConfig)
               if getattr(cfg, f.name) != getattr(EngineConfig(), f.name)}
    assert changed == {f.name for f in dataclasses.fields(EngineConfig)}
    assert cfg.level_range_dbfs == (-50.0, -10.0) and cfg.speech_only is False and cfg.vad_aggressiveness == 3


def test_a_bad_value_is_refused_by_the_config():
    with pytest.raises(ValueError, match="multiple of 20 ms"):
        engine_config(_parser().parse_args(["--hop", "0.33"]))
    with pytest.raises(SystemExit):
        _parser().parse_args(["--vad", "5"])
