"""The workers' garbage collector (veza_core.heap): a heap that grows with long-lived connections is not walked
again and again while it grows, and every pause is measured. Each check runs in a fresh interpreter: the settings
are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

GROWTH = """
import gc, json
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2 and full.append(1))

def connect(sockets):  # ~100 tracked objects per socket that outlive every young collection, as a chat socket's do
    return [[[] for _ in range(100)] for _ in range(sockets)]

def full_collections_while_growing():
    full.clear()
    held = connect(5000)
    count = len(full)
    del held
    return count

default = full_collections_while_growing()
gc.collect()
from veza_core.heap import settle_heap
settle_heap()
settled = full_collections_while_growing()
print(json.dumps({"default": default, "settled": settled, "threshold": gc.get_threshold(),
                  "frozen": gc.get_freeze_count()}))
"""

PAUSES = """
import gc, json
from prometheus_client import REGISTRY
from veza_core.heap import settle_heap

def count(generation):
    return REGISTRY.get_sample_value("veza_gc_pause_seconds_count", {"generation": str(generation)})

settle_heap()
before = [count(g) for g in range(3)]
gc.collect(0)
gc.collect(2)
print(json.dumps({"before": before, "after": [count(g) for g in range(3)],
                  "full_sum": REGISTRY.get_sample_value("veza_gc_pause_seconds_sum", {"generation": "2"})}))
"""


def run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_growing_heap_is_not_walked_again_and_again() -> None:
    result = run(GROWTH)
    # CPython's defaults walk the whole heap every ~70,000 survivors: 500,000 of them take several full collections.
    assert result["default"] >= 4, result
    assert result["settled"] == 0, result
    assert result["threshold"][2] == 100
    assert result["frozen"] > 0  # what booting allocated is out of the collector's reach


def test_every_pause_is_measured_by_generation() -> None:
    result = run(PAUSES)
    assert result["before"] == [0.0, 0.0, 0.0]  # exported from the start
    assert result["after"][0] >= 1 and result["after"][2] == 1, result
    assert result["full_sum"] > 0
