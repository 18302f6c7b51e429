"""safety.inpaint_overlap: the guided inpainting's soft tail over the previous chunk's predictions, or none.

With ``none`` only the decided steps guide the new chunk (n_overlap = n_fixed), so a contact-rich task does not
follow its previous plan's stale predictions (issue 15). The setting must reach the planner's conditioner through
edgedp/app.py's assembly, and the eval conditions record it.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgedp.app import assemble
from edgedp.cli import main
from edgedp.config import parse_config
from edgedp.runtime.conditioning import ChunkConditioner
from edgedp.runtime.lifecycle import Runtime
from tests.example_configs import two_joint_config

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "examples" / "sim.yaml"


class _Policy:
    """The sizes, sampler options and action normalizer the conditioner reads from a policy."""

    horizon, action_dim, device, dtype = 16, 2, torch.device("cpu"), torch.float32

    def __init__(self):
        self.sampler_options = {"inpaint": "guided"}
        self.spec = type("S", (), {"action_key": "action"})()
        self.normalizers = {"action": lambda x: 2 * x}


def _decided(conditioner) -> tuple[int, int]:
    """(n_fixed, n_overlap) for a chunk planned 3 steps after the previous one, switch 0.25 s after its start:
    the previous chunk (horizon 16) still predicts 13 new indices, 6 of which are decided."""
    prev = np.stack([np.arange(16.0), -np.arange(16.0)], axis=1)
    conditioner.remember(prev, 5.0, lookahead=conditioner.lookahead)
    t0 = conditioner.snap(5.3)
    out = conditioner.inputs(t0, t0 + 0.25)
    return int(out["n_fixed"]), int(out["n_overlap"])


def test_none_conditions_only_the_decided_steps_and_soft_keeps_the_tail():
    soft = ChunkConditioner.for_policy(_Policy(), 0.1, 1, 8)  # the default: today's behaviour
    none = ChunkConditioner.for_policy(_Policy(), 0.1, 1, 8, overlap="none")
    assert soft.overlap == "soft" and none.overlap == "none"
    assert _decided(soft) == (6, 13)
    assert _decided(none) == (6, 6)
    # the decided steps and everything else the sampler is given are the same
    assert none.lookahead == soft.lookahead and none.replan_advance == soft.replan_advance
    with pytest.raises(ValueError, match="inpaint overlap 'half'"):
        ChunkConditioner.for_policy(_Policy(), 0.1, 1, 8, overlap="half")


@pytest.mark.parametrize("overlap, differs", [("soft", True), ("none", False)])
def test_config_reaches_the_planners_conditioner(tmp_path, overlap, differs):
    """Assembled by edgedp/app.py as `edgedp run` does; the planner is built by the runtime from the parts."""
    data = two_joint_config(scene={"task": "reach"}, safety={"join": "inpaint", "inpaint_overlap": overlap})
    built = assemble(parse_config(data, base=tmp_path))
    rig = None
    try:
        assert built.parts.config_summary["inpaint_overlap"] == overlap
        rig = Runtime(built.parts, None, plot=False, live=False)._make_rig()
        c = rig.planner.conditioner
        assert c is not None and c.inpaint and c.overlap == overlap
        horizon = built.parts.policy.horizon
        c.remember(np.zeros((horizon, c.policy.action_dim)), 5.0, lookahead=c.lookahead)
        n_fixed, n_overlap = c.decided(2.0, 5.2, 5.25, horizon)
        assert (n_overlap > n_fixed) is differs
    finally:
        if rig is not None:
            rig.control.close()
            for ring in (rig.chunks, rig.states):
                ring.close()
        for close in reversed(built.devices.closers):
            close()


def test_other_joins_ignore_it_and_record_none(tmp_path):
    data = two_joint_config(scene={"task": "reach"}, safety={"join": "crossfade", "inpaint_overlap": "none"})
    built = assemble(parse_config(data, base=tmp_path))
    try:
        assert built.parts.config_summary["inpaint_overlap"] is None  # like inpaint_form: only with join inpaint
        assert built.parts.policy.sampler_options == {}
    finally:
        for close in reversed(built.devices.closers):
            close()


def test_a_wrong_value_is_a_one_line_config_error(tmp_path, capsys):
    data = copy.deepcopy(yaml.safe_load(SIM.read_text()))
    data.setdefault("safety", {})["inpaint_overlap"] = "half"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "safety.inpaint_overlap" in err and len(err.splitlines()) == 1


def test_eval_flag_reaches_the_conditions():
    from edgedp.commands.eval import apply_overrides
    from edgedp.config import load_config
    from edgedp.evaluation.episodes import EvalSession

    cfg = load_config(SIM)
    apply_overrides(cfg, join="inpaint", inpaint_overlap="none")
    assert cfg.safety.inpaint_overlap == "none"
    session = EvalSession(cfg)  # built by edgedp/app.py, nothing started
    assert session.parts.inpaint_overlap == "none"
    assert session.summary["inpaint_overlap"] == "none" and session.summary["join"] == "inpaint"


def test_eval_inpaint_form_flag_reaches_the_policy_loop():
    """`edgedp eval --inpaint-form replace` overrides safety.inpaint_form (the example says guided) all the way into
    the K-step loop the runtime samples with, as a config file would."""
    from edgedp.commands.eval import apply_overrides
    from edgedp.config import load_config
    from edgedp.evaluation.episodes import EvalSession

    cfg = load_config(SIM)
    apply_overrides(cfg, join="inpaint", inpaint_form="replace")
    assert cfg.safety.inpaint_form == "replace"
    session = EvalSession(cfg)  # built by edgedp/app.py, nothing started
    assert session.summary["inpaint_form"] == "replace"
    assert session.parts.policy.sampler_options.get("inpaint") == "replace"
