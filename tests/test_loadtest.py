"""``python -m realtime loadtest --find``: the bisection for the largest N that holds, and a real run of it
against a spawned server with the shipped model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from realtime.loadtest import find_capacity


@pytest.mark.parametrize("capacity", [1, 7, 100, 333, 799, 800])
def test_find_capacity_bisects_to_the_largest_n_that_holds(capacity):
    found, tried = find_capacity(lambda n: n <= capacity, 1, 800)
    assert found <= capacity and (found == capacity or capacity - found <= max(1, int(0.05 * found)))
    assert found in tried and tried[:2] == [1, 800]  # both ends first
    assert len(tried) <= 2 + 10  # log2(800) probes at most, fewer at 5 % resolution


def test_find_capacity_when_nothing_holds_and_bad_ranges():
    assert find_capacity(lambda n: False, 10, 50) == (None, [10])
    assert find_capacity(lambda n: True, 5, 5) == (5, [5])
    for lo, hi in ((0, 5), (6, 5)):
        with pytest.raises(ValueError):
            find_capacity(lambda n: True, lo, hi)


def test_cli_find_against_a_spawned_server():
    """Two to four paced streams of 3 s hold on any machine: the search tries both ends and recommends 90 %
    of the top one; the rows are real runs (every stream ended with estimates)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "realtime", "loadtest", "--spawn", "--find", "2:4", "--seconds", "3",
                          "--ramp", "0.5", "--json"], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    runs, summary = lines[:-1], lines[-1]
    assert [r["streams"] for r in runs] == [2, 4] and all(r["holds"] and r["held"] == r["streams"] for r in runs)
    assert all(r["events"] >= 4 * r["streams"] and r["errors"] == 0 for r in runs)
    assert summary["capacity"] == 4 and summary["tried"] == [2, 4] and summary["recommended_max_connections"] == 3
    bad = subprocess.run([sys.executable, "-m", "realtime", "loadtest", "--find", "9:3"], cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "LO <= HI" in bad.stderr
    tcp = subprocess.run([sys.executable, "-m", "realtime", "loadtest", "--find", "2:4", "--url", "tcp://127.0.0.1:9"],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert tcp.returncode == 1 and "give --url ws://" in tcp.stderr, tcp.stderr[-500:]
