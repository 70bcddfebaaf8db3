from __future__ import annotations

from types import SimpleNamespace

from distopt import metrics as M
from distopt.config import load_config
from distopt.progress import ProgressTable

from conftest import CONFIGS


def _trial(i: int) -> SimpleNamespace:
    return SimpleNamespace(trial_id=f"trial_{i:05d}", config={"model.channels": 4 + i},
                           last_result={M.EPOCH: 2, M.PHASE: "final", M.VAL_ACCURACY: 0.9,
                                        M.SIZE_BYTES: 1000.0 + i})


def test_table_is_compact_running_plus_recent_finished():
    cfg = load_config(CONFIGS / "mnist_cnn.yaml")  # 13 searched keys
    table = ProgressTable(cfg, interval_s=1e9)
    trials = [_trial(i) for i in range(9)]
    for t in trials:
        table.on_trial_start(0, trials, t)
    for t in trials[:7]:
        table.on_trial_complete(0, trials, t)
    table.on_trial_error(0, trials, trials[7])
    text = table.render()
    lines = text.splitlines()
    assert lines[0] == "[7 done, 1 failed of 12]"
    header = lines[1].split()
    assert header[:2] == ["trial", "status"] and len(header) == 2 + 6 + 4  # 6 searched keys
    rows = lines[2:]
    # 1 running + the 5 most recently finished (the failed one among them); older ones hidden.
    assert len(rows) == 6
    assert sum("RUNNING" in r for r in rows) == 1 and sum("FAILED" in r for r in rows) == 1
    assert not any(r.startswith("00000") for r in rows)
