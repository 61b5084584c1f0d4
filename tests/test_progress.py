"""Progress lines of long stages: the first within ten steps, then one every ~10 s, then a last."""

from __future__ import annotations

import logging
import re

import numpy as np

from taufm.progress import Progress, duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_line_comes_after_ten_steps_then_one_every_interval(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="taufm.progress")
    progress = Progress("pretrain x, epoch 1/2", total=200, clock=clock, bar=False)
    for _ in range(9):
        clock.now += 0.1
        progress.update(loss=2.5)
    assert not caplog.records, "nothing before ten steps (or ten seconds)"
    clock.now += 0.1
    progress.update(loss=2.25)
    assert [r.getMessage() for r in caplog.records] == ["pretrain x, epoch 1/2: 10/200 steps (5%), 10 steps/s, 19 s left, loss 2.25"]
    for _ in range(99):  # 9.9 s more: no line yet
        clock.now += 0.1
        progress.update()
    assert len(caplog.records) == 1
    clock.now += 0.1  # 10 s after the first line: the second
    progress.update()
    assert len(caplog.records) == 2 and caplog.records[-1].getMessage().startswith("pretrain x, epoch 1/2: 110/200 steps (55%)")
    for _ in range(90):
        clock.now += 0.1
        progress.update()
    progress.close()
    assert len(caplog.records) == 3
    assert caplog.records[-1].getMessage() == "pretrain x, epoch 1/2: 200/200 steps (100%), 10 steps/s, done in 20 s, loss 2.25"


def test_slow_steps_report_after_the_interval_and_resumed_steps_do_not_count_in_the_rate(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="taufm.progress")
    progress = Progress("finetune", total=50, unit="step", clock=clock, bar=False, already_done=20)
    clock.now += 12.0
    progress.update()
    (record,) = caplog.records
    assert record.getMessage() == "finetune: 21/50 steps (42%), 0.0833 steps/s, 5 min 48 s left"


def test_durations_read_naturally():
    assert [duration(s) for s in (4.4, 65, 7325, float("inf"))] == ["4 s", "1 min 5 s", "2 h 2 min", "?"]


def _progress_lines(caplog, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "taufm.progress" and r.getMessage().startswith(what)]


def test_pretraining_logs_progress_within_its_first_ten_steps(tmp_path, caplog):
    from tests.test_backbones import settings_for, write_feature_token_shard

    from taufm.pretrain.train import pretrain

    write_feature_token_shard(tmp_path / "tokens.parquet", n_jets=512)  # 384 training jets: 12 steps of 32
    caplog.set_level(logging.INFO, logger="taufm")
    pretrain([tmp_path / "tokens.parquet"], tmp_path / "out", settings_for("continuous-mpm", epochs=1))
    lines = _progress_lines(caplog, "pretrain continuous-mpm, epoch 1/1")
    assert len(lines) >= 2, lines
    steps = int(re.search(r": (\d+)/12 steps", lines[0])[1])
    assert 1 <= steps <= 10 and "steps/s" in lines[0] and re.search(r"loss \d", lines[0]), lines[0]
    assert "12/12 steps (100%)" in lines[-1] and "done in" in lines[-1]


def test_a_finetuning_cell_logs_progress_within_its_first_ten_steps(tmp_path, caplog):
    from tests.test_finetune_backbones import SETTINGS, write_shards

    from taufm.finetune.train import run_finetune

    shards = write_shards(tmp_path / "tokens", n=320)
    caplog.set_level(logging.INFO, logger="taufm")
    settings = SETTINGS.__class__.from_mapping({**SETTINGS.to_dict(), "batch_size": 8, "epochs": 2})
    run_finetune("tau_id", "part", 96, 0, shards, tmp_path / "run", settings)
    lines = _progress_lines(caplog, "finetune tau_id/part n=96 seed=0")
    assert len(lines) >= 2, lines
    steps = int(re.search(r": (\d+)/24 steps", lines[0])[1])
    assert steps == 10 or steps < 10 and "left" in lines[0], lines[0]
    assert "epoch 1/2" in lines[0] and np.isfinite(float(re.search(r"loss (\S+)", lines[0])[1]))
    assert "24/24 steps (100%)" in lines[-1]
