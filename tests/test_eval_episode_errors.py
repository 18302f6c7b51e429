"""One failed episode does not lose an `edgedp eval` invocation: it becomes an error row (seed, one-line reason),
the next episodes still run, the exit code says something failed; an interrupted evaluation keeps what finished.

The fault is injected (a runtime supervisor that raises on the 2nd episode) because the real parts do not fail on
demand; everything around it (Runtime.run's shutdown with the safe stop, the session, the document) is real."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgedp.cli import main
from edgedp.evaluation import episodes

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "examples" / "sim.yaml"


def _config(tmp_path) -> str:
    cfg = yaml.safe_load(SIM.read_text())
    cfg["policy"]["checkpoint"] = "preset:small"
    cfg["telemetry"] = {"live": False, "plot": False}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def _fault_on_second_episode(monkeypatch, fault) -> list:
    calls = []
    original = episodes._EpisodeRuntime._supervise

    def supervise(self, *args):
        calls.append(self)
        if len(calls) == 2:
            return fault(self, original, *args)
        return original(self, *args)

    monkeypatch.setattr(episodes._EpisodeRuntime, "_supervise", supervise)
    return calls


def test_a_failed_episode_is_an_error_row_and_the_rest_still_run(tmp_path, monkeypatch, capsys):
    def boom(rt, original, *args):
        raise RuntimeError("injected planner fault\nsecond line")

    runtimes = _fault_on_second_episode(monkeypatch, boom)
    out = tmp_path / "eval.json"
    code = main(["eval", _config(tmp_path), "--episodes", "3", "--episode-timeout", "1.0", "--seed", "7",
                 "--steps", "4", "--json", str(out)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    summary = [line for line in err if line.startswith("edgedp eval:")]  # (the runtime reports its own error too)
    assert len(summary) == 1 and "1 of 3 episode(s) failed with an error" in summary[0]
    doc = json.loads(out.read_text())
    assert doc["episodes"] == 2 and doc["episode_errors"] == 1 and doc["interrupted"] is False
    (run,) = doc["runs"]
    assert [r["seed"] for r in run["per_episode"]] == [7, 9]
    assert all(r["chunks"] >= 1 for r in run["per_episode"])  # the episode after the fault really ran
    (row,) = run["errors"]
    assert (row["index"], row["seed"]) == (1, 8)
    assert "injected planner fault" in row["error"] and "\n" not in row["error"]
    failed = runtimes[1]
    assert failed.tel.to_dict()["stopped_by"] == "error"  # Runtime.run's shutdown ran for the failed episode
    assert len(runtimes) == 3


@pytest.mark.parametrize("signal_name, exit_code, reason", [("ctrl-c", 130, "interrupted"),
                                                             ("sigterm", 143, "terminated (SIGTERM)")])
def test_an_interrupt_keeps_the_finished_episodes(tmp_path, monkeypatch, capsys, signal_name, exit_code, reason):
    def stop_signal(rt, original, *args):
        rt.request_stop(signal_name)  # what the runtime's SIGINT / SIGTERM handler does during an episode
        return original(rt, *args)

    _fault_on_second_episode(monkeypatch, stop_signal)
    out = tmp_path / "eval.json"
    code = main(["eval", _config(tmp_path), "--episodes", "3", "--episode-timeout", "1.0", "--seed", "7",
                 "--steps", "4", "--json", str(out)])
    assert code == exit_code
    err = capsys.readouterr().err.strip().splitlines()
    summary = [line for line in err if line.startswith("edgedp eval:")]
    assert len(summary) == 1 and f"{reason} after 1 finished episode(s)" in summary[0]
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and doc["episodes"] == 1
    assert [r["seed"] for r in doc["runs"][0]["per_episode"]] == [7]
    assert not list(tmp_path.glob(".*partial*")) and not list(tmp_path.glob("*.tmp"))
