"""The taufm command line: arguments, exit codes and error messages."""

from __future__ import annotations

import pytest
import uproot

from taufm.cli import main


def test_simulate_ee_writes_a_shard(tmp_path):
    out = tmp_path / "qq_000.root"
    assert main(["simulate-ee", "--sample", "qq", "--shard", "0", "--events", "5", "--output", str(out)]) == 0
    with uproot.open(out) as f:
        assert f["events"].num_entries == 5


def test_detector_settings_arrive_as_json(tmp_path):
    out = tmp_path / "qq_000.root"
    args = ["simulate-ee", "--sample", "qq", "--shard", "0", "--events", "5", "--output", str(out)]
    assert main([*args, "--detector", '{"photon_min_energy": 1000.0, "neutral_hadron_min_energy": 1000.0}']) == 0
    with uproot.open(out) as f:
        types = f["events"]["MergedRecoParticles.type"].array().to_list()
    assert all(abs(t) != 22 and abs(t) != 2112 for event in types for t in event)


def test_unknown_sample_is_an_error_naming_it(tmp_path, capsys):
    code = main(["simulate-ee", "--sample", "tautau", "--shard", "0", "--events", "5", "--output", str(tmp_path / "x.root")])
    assert code == 2
    assert "unknown sample 'tautau'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_detector_key_is_named(tmp_path, capsys):
    code = main(
        ["simulate-ee", "--sample", "qq", "--shard", "0", "--events", "5", "--output", str(tmp_path / "x.root"), "--detector", '{"ecal_stochstic": 0.2}']
    )
    assert code == 2
    assert "ecal_stochstic" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("events", ["0", "-3", "ten"])
def test_non_positive_event_count_is_refused(tmp_path, events, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate-ee", "--sample", "qq", "--shard", "0", "--events", events, "--output", str(tmp_path / "x.root")])
    assert exit_info.value.code == 2
    assert "--events" in capsys.readouterr().err


def test_malformed_json_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["simulate-ee", "--sample", "qq", "--shard", "0", "--events", "1", "--output", str(tmp_path / "x.root"), "--detector", "{oops"])
    assert "not valid JSON" in capsys.readouterr().err




def test_embedding_probes_need_all_their_outputs(tmp_path, capsys):
    args = ["embeddings", "--pretrained", "b.pt", "--finetuned-model", "m.pt", "--output", str(tmp_path / "e.npz"), "--figure-stem", str(tmp_path / "fig6")]
    code = main([*args, "--probes-csv", str(tmp_path / "p.csv"), "shard.parquet"])
    assert code != 0
    assert "--probes-parquet" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
