"""benchmarks/pusht_table.py: the pure parts that turn sharded `edgedp eval` documents into one table row, and
the derived config a cell writes for what `edgedp eval` has no flag for (safety.join, policy.sampler).
No episodes run here; the figures come from synthetic per-episode rows in `edgedp eval`'s own layout."""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from edgedp.config import load_config
from edgedp.evaluation.episodes import EpisodeResult

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("pusht_table", ROOT / "benchmarks" / "pusht_table.py")
pt = importlib.util.module_from_spec(_spec)
sys.modules["pusht_table"] = pt  # dataclasses look their module up while the class is made
_spec.loader.exec_module(pt)


def _row(seed: int, success: bool = False, cov: float = 0.2, jp: float = 0.0001, jv: float = 0.05,
         t: float | None = None, infer: float = 100.0, stopped_by: str = "timeout") -> dict:
    """One per-episode row exactly as `edgedp eval --json` writes it (asdict of EpisodeResult)."""
    return asdict(EpisodeResult(index=0, seed=seed, success=success, time_to_success_s=t if success else None,
                                final_distance_m=0.2, min_distance_m=0.2, chosen_target=None,
                                join_jump_position_rad=jp, join_jump_velocity_rad_s=jv, chunks=30,
                                dropped_steps=2, inference_ms_p50=infer, stopped_by=stopped_by,
                                max_coverage=cov, final_coverage=0.0))


def _doc(rows: list[dict]) -> dict:
    """The shape of an `edgedp eval --json` document with one condition."""
    return {"schema": 1, "tool": "edgedp eval", "runs": [{"episodes": len(rows), "per_episode": rows}]}


def test_shard_seeds_are_disjoint_cover_the_range_and_repeat():
    a = pt.shard_seeds(100000, 50, 2)
    assert a == [list(range(100000, 100025)), list(range(100025, 100050))]
    assert a == pt.shard_seeds(100000, 50, 2)  # the same seeds in every cell
    b = pt.shard_seeds(100000, 5, 3)
    assert [len(s) for s in b] == [2, 2, 1]
    assert sorted(x for s in b for x in s) == list(range(100000, 100005))
    assert pt.shard_seeds(100000, 1, 2) == [[100000]]  # no empty shard
    assert pt.batches(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_wilson_interval_at_zero_and_all_successes():
    none = pt.summarize_cell([_row(100000 + i) for i in range(20)])
    assert none["successes"] == 0 and none["success_rate"] == 0.0
    assert none["success_ci95"][0] == 0.0 and none["success_ci95"][1] == pytest.approx(0.161, abs=0.001)
    every = pt.summarize_cell([_row(100000 + i, success=True, t=10.0 + i) for i in range(20)])
    assert every["success_rate"] == 1.0
    assert every["success_ci95"][0] == pytest.approx(0.839, abs=0.001) and every["success_ci95"][1] == 1.0


def test_merging_two_shards_keeps_every_episode_and_the_largest_join_jump():
    shard0 = [_row(100000 + i, cov=0.1, jp=0.0002, jv=0.10) for i in range(10)]
    shard1 = [_row(100010 + i, cov=0.3, jp=0.0001, jv=0.05) for i in range(10)]
    shard1[4] = _row(100014, success=True, cov=0.97, jp=0.0009, jv=0.40, t=12.5)
    shard1[7] = _row(100017, stopped_by="watchdog", cov=0.3)
    # the shards finish in either order; the merge is by seed
    rows = pt.merge_rows([pt.episode_rows(_doc(shard1)), pt.episode_rows(_doc(shard0))])
    assert [r["seed"] for r in rows] == list(range(100000, 100020))
    s = pt.summarize_cell(rows, expected=range(100000, 100020))
    assert s["episodes"] == 20 and s["successes"] == 1 and s["missing_seeds"] == []
    assert s["join_jump_max_position_rad"] == pytest.approx(0.0009)   # only in shard 1
    assert s["join_jump_max_velocity_rad_s"] == pytest.approx(0.40)
    assert s["mean_max_coverage"] == pytest.approx((10 * 0.1 + 9 * 0.3 + 0.97) / 20)
    assert s["time_to_success_median_s"] == pytest.approx(12.5)
    assert s["watchdog_stops"] == 1
    assert s["dropped_steps"] == 40
    assert s["inference_ms_p50"] == pytest.approx(100.0)


def test_overlapping_shards_and_multi_condition_documents_are_refused():
    with pytest.raises(ValueError, match="100003"):
        pt.merge_rows([[_row(100003)], [_row(100003)]])
    with pytest.raises(ValueError, match="exactly one run"):
        pt.episode_rows({"runs": [{"per_episode": []}, {"per_episode": []}]})


def test_errors_are_not_episodes_and_unrun_seeds_are_reported_missing():
    rows = [_row(100000), _row(100002, success=True, t=8.0)]
    s = pt.summarize_cell(rows, errors=[{"seed": 100001, "error": "exit 1: bus timeout"}],
                          expected=range(100000, 100004))
    assert s["episodes"] == 2 and s["errors"] == 1 and s["successes"] == 1
    assert s["missing_seeds"] == [100003]


def test_markdown_renders_every_cell_with_its_interval():
    rows = [_row(100000 + i) for i in range(20)]
    cell = pt.CELLS[0]
    doc = {"run": {"command": "python benchmarks/pusht_table.py", "cpu": "test cpu", "torch": "x", "shards": 2,
                   "first_seed": 100000},
           "cells": [{"cell": asdict(cell), "status": "done", "checkpoint": "/m/pusht_state", "join": "crossfade",
                      "sampler": "checkpoint's", "backend": "eager", "precision": "fp32",
                      "summary": pt.summarize_cell(rows), "per_episode": rows, "errors": [],
                      "commands": ["edgedp eval ..."], "load_start": [2.0, 1.0, 1.0], "load_end": [3.0, 2.0, 1.0]}]}
    md = pt.markdown(doc)
    assert f"| {cell.name} |" in md and "0 % (0/20; 0–16 %)" in md and "test cpu" in md
    assert "2.0/1.0/1.0 → 3.0/2.0/1.0" in md


@pytest.mark.parametrize("name", ["state_async_200ms_inpaint", "state_dpm_k4", "state_dpm_k4_warm",
                                  "state_async_inpaint_replace", "state_async_k10", "state_async_inpaint_none",
                                  "state_async_200ms_inpaint_none"])
def test_derived_config_sets_the_override_and_reads_the_same_checkpoint(tmp_path, name):
    cell = next(c for c in pt.CELLS if c.name == name)
    plan = pt.plan_cell(cell, tmp_path, {}, None)
    assert plan.config == tmp_path / "cells" / name / "config.yaml" and plan.config.is_file()
    derived, original = load_config(plan.config), load_config(pt.CONFIGS[cell.policy])
    assert os.path.realpath(derived.policy.checkpoint) == os.path.realpath(original.policy.checkpoint)
    if cell.join:
        assert derived.safety.join == cell.join == plan.join
    if cell.sampler:
        assert derived.policy.sampler == cell.sampler == plan.sampler
    assert derived.policy.warm_start is cell.warm_start and original.policy.warm_start is False
    if cell.inpaint_form:
        assert derived.safety.inpaint_form == cell.inpaint_form == plan.inpaint_form
    if cell.inpaint_overlap:  # safety.inpaint_overlap in the file edgedp eval reads (the example says soft)
        assert derived.safety.inpaint_overlap == cell.inpaint_overlap == plan.inpaint_overlap
        assert original.safety.inpaint_overlap == "soft" and "inpaint_overlap" in plan.config.read_text()
    if cell.sampler in ("ddim", "ddpm"):  # the state example's log-SNR timesteps are dropped: they are for solvers
        assert derived.policy.timesteps is None
    cmd = pt.eval_command(plan, [100000, 100001], tmp_path / "x.json", None)
    assert cmd[cmd.index("--steps") + 1] == str(cell.steps)
    assert cmd[cmd.index("--latency-ms") + 1] == f"{cell.latency_ms:g}"
    assert cmd[cmd.index("--seed") + 1] == "100000" and cmd[cmd.index("--episodes") + 1] == "2"


def test_plain_cells_use_the_example_config_and_headline_cells_get_video(tmp_path):
    state = pt.plan_cell(pt.CELLS[0], tmp_path, {}, tmp_path / "v")
    image = pt.plan_cell(pt.CELLS[1], tmp_path, {}, tmp_path / "v")
    assert state.config == pt.CONFIGS["state"] and state.derived is None
    assert state.video == tmp_path / "v" / pt.CELLS[0].name  # a state config films the scene render
    plain = next(c for c in pt.CELLS if not c.headline)
    assert pt.plan_cell(plain, tmp_path, {}, tmp_path / "v").video is None  # not a headline cell
    assert image.video == tmp_path / "v" / pt.CELLS[1].name
    ort = pt.plan_cell(next(c for c in pt.CELLS if c.name == "state_ortloop"), tmp_path, {}, None)
    pre = pt.prebuild_command(ort)
    assert pre is not None and pre[pre.index("--backend") + 1] == "onnxruntime-loop"
    assert pt.prebuild_command(state) is None


class _FakeRunner:
    """Stands in for the child processes: writes `edgedp eval`'s document for the seeds asked, or fails like it
    (exit 1, runtime error: nothing written) for any invocation that includes a seed in ``bad``."""

    def __init__(self, bad=(), code=1):
        import threading

        self.bad, self.code, self.calls = set(bad), code, []
        self.stop = threading.Event()

    def run(self, cmd, log):
        import json

        first, n = int(cmd[cmd.index("--seed") + 1]), int(cmd[cmd.index("--episodes") + 1])
        seeds = list(range(first, first + n))
        self.calls.append(seeds)
        if self.bad & set(seeds):
            return self.code, "Traceback ...\nedgedp eval: episode 0 (seed x): the runtime stopped with exit code 3"
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(_doc([_row(s) for s in seeds])))
        return 0, ""


def _collect(tmp_path, runner, seeds, batch):
    plan = pt.plan_cell(pt.CELLS[0], tmp_path, {}, None)
    plan.dir.mkdir(parents=True, exist_ok=True)
    got, errs = [], []
    pt.run_shard(plan, 0, seeds, batch, None, runner, lambda r, e: (got.append(r), errs.extend(e)), lambda m: None)
    return pt.merge_rows(got), errs


def test_a_failed_batch_is_rerun_seed_by_seed_and_only_the_failing_seed_is_lost(tmp_path):
    runner = _FakeRunner(bad={100006})
    rows, errs = _collect(tmp_path, runner, list(range(100000, 100010)), batch=5)
    assert [r["seed"] for r in rows] == [s for s in range(100000, 100010) if s != 100006]
    assert [e["seed"] for e in errs] == [100006] and "exit 1" in errs[0]["error"]
    assert runner.calls.count([100006]) == 2  # tried twice alone
    s = pt.summarize_cell(rows, errs, range(100000, 100010))
    assert s["episodes"] == 9 and s["errors"] == 1 and s["missing_seeds"] == []


def test_a_usage_error_fails_the_cell_at_once(tmp_path):
    runner = _FakeRunner(bad={100000}, code=2)
    with pytest.raises(RuntimeError, match="edgedp eval:"):
        _collect(tmp_path, runner, list(range(100000, 100010)), batch=5)
    assert runner.calls == [list(range(100000, 100005))]  # no retries of a deterministic error


def test_shipped_cells_keep_the_configs_sampler_and_k(tmp_path):
    """A cell without steps runs the example as shipped (DPM-Solver++ K=4 at log-SNR timesteps): no --steps
    reaches edgedp eval (a --steps 10 there turned the shipped cell into a K=10 log-SNR run), and the prebuild of a
    compiled cell asks for the same sampler, K and timesteps the shards will look up."""
    shipped = pt.plan_cell(next(c for c in pt.CELLS if c.name == "state_shipped"), tmp_path, {}, None)
    assert "--steps" not in pt.eval_command(shipped, [100000], tmp_path / "x.json", None)
    assert (shipped.sampler, shipped.steps, shipped.timesteps) == ("dpmsolver++", 4, "logsnr")
    compiled = pt.plan_cell(next(c for c in pt.CELLS if c.name == "state_ortloop_shipped"), tmp_path, {}, None)
    pre = pt.prebuild_command(compiled)
    assert pre[pre.index("--sampler") + 1] == "dpmsolver++" and pre[pre.index("--steps") + 1] == "4"
    assert pre[pre.index("--timesteps") + 1] == "logsnr"
    ddim = pt.plan_cell(next(c for c in pt.CELLS if c.name == "state_ortloop"), tmp_path, {}, None)
    pre = pt.prebuild_command(ddim)
    assert pre[pre.index("--sampler") + 1] == "ddim" and "--timesteps" not in pre
