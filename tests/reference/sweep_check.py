#!/usr/bin/env python
"""Compare edgedp against one reference sweep case (made by make_lerobot_sweep.py / make_original_sweep.py).

A case directory holds the checkpoint as the reference wrote it (``pretrained_model/`` or
``checkpoint.ckpt``), ``expected.npz`` (inputs, recorded noise, the reference's outputs) and
``case.json``. ``check_case`` loads the checkpoint through the public ``edgedp.load_policy``, feeds
the recorded inputs and noise, and returns the worst action error as a fraction of the action range,
or the one-line refusal. Run as a script it prints the sweep as a Markdown table:

    python tests/reference/sweep_check.py tests/fixtures/sweep/* /tmp/sweep_large/*
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Parity bar: every action within this fraction of its dimension's range (max - min of the statistics).
ACTION_TOL = 1e-5


@dataclass
class CaseResult:
    name: str
    reference: str
    summary: str
    status: str          # "matched" | "refused" | "MISMATCH"
    worst: float | None  # worst |edgedp - reference| / action range over the whole horizon
    message: str = ""

    def row(self) -> str:
        if self.status == "refused":
            outcome = f"refused: `{self.message}`"
        else:
            outcome = f"{self.status}, worst {self.worst:.1e} of range"
        return f"| {self.name} | {self.reference} | {self.summary} | {outcome} |"


def missing_reference(reason: str) -> None:
    """Reference data absent: the run says so (a skip with the reason); under CI=true it fails."""
    import os

    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"reference missing under CI: {reason}")
    pytest.skip(reason)


def checkpoint_path(case_dir: Path) -> Path:
    for name in ("pretrained_model", "checkpoint.ckpt"):
        if (case_dir / name).exists():
            return case_dir / name
    raise FileNotFoundError(f"{case_dir}: neither pretrained_model/ nor checkpoint.ckpt")


def observations(exp: dict, policy) -> dict:
    return {k: exp[f"raw.{k}"] for k in policy.spec.image_keys + policy.spec.state_keys}


def variance_noise(exp: dict, policy) -> torch.Tensor | None:
    if not policy.stochastic:
        return None
    vn = torch.from_numpy(exp["variance_noise"])
    k = policy.num_inference_steps
    if vn.shape[0] != k:
        raise AssertionError(f"recorded {vn.shape[0]} variance-noise rows for {k} steps")
    return vn


def run_case(case_dir: Path):
    """(policy, expected arrays, edgedp's raw trajectory (1, horizon, A), its global_cond)."""
    import edgedp

    exp = dict(np.load(case_dir / "expected.npz"))
    policy = edgedp.load_policy(checkpoint_path(case_dir))
    with torch.inference_mode():
        gc = policy.encode(observations(exp, policy))
        naction = policy.sample(gc, torch.from_numpy(exp["noise"]), variance_noise(exp, policy))
        traj = policy.unnormalize_action(naction).numpy()
    return policy, exp, traj, gc.numpy()


def check_case(case_dir: Path) -> CaseResult:
    from edgedp.errors import UserError

    case_dir = Path(case_dir)
    meta = json.loads((case_dir / "case.json").read_text())
    name, ref, summary = case_dir.name, meta.get("reference", "?"), meta.get("summary") or _summary(meta)
    try:
        policy, exp, traj, _ = run_case(case_dir)
    except UserError as err:
        return CaseResult(name, ref, summary, "refused", None, str(err).split(": ", 1)[-1])
    rng = exp["action_range"].reshape(1, 1, -1).astype(np.float64)
    worst = float((np.abs(traj.astype(np.float64) - exp["traj"]) / rng).max())
    sl = policy.action_slice
    if exp["chunk"].shape[1] != sl.stop - sl.start:
        return CaseResult(name, ref, summary, "MISMATCH", worst,
                          f"n_action_steps {sl.stop - sl.start} != reference {exp['chunk'].shape[1]}")
    worst = max(worst, float((np.abs(traj[:, sl].astype(np.float64) - exp["chunk"]) / rng).max()))
    return CaseResult(name, ref, summary, "matched" if worst <= ACTION_TOL else "MISMATCH", worst)


_SHORT = {"n_groups": "groups", "kernel_size": "kernel", "down_dims": "down_dims", "diffusion_step_embed_dim": "step emb",
          "use_film_scale_modulation": "FiLM scale", "n_obs_steps": "n_obs", "horizon": "horizon",
          "n_action_steps": "n_action", "prediction_type": "pred", "clip_sample": "clip",
          "clip_sample_range": "clip range", "beta_schedule": "betas", "beta_start": "beta_start", "beta_end": "beta_end",
          "num_train_timesteps": "T", "use_group_norm": "GroupNorm", "use_separate_rgb_encoder_per_camera": "separate enc",
          "crop_shape": "crop", "resize_shape": "resize", "crop_ratio": "crop_ratio",
          "spatial_softmax_num_keypoints": "keypoints"}
# Values the generators use unless a case says otherwise (left out of the summary).
_QUIET = {"n_groups": 8, "kernel_size": 5, "diffusion_step_embed_dim": 32, "pretrained_backbone_weights": None}


def _summary(meta: dict) -> str:
    """A short description of a LeRobot case from its recorded DiffusionConfig overrides."""
    c = meta.get("case", {})
    cfg = dict(c.get("cfg", {}))
    parts = []
    cams = c.get("cams") or {}
    if cams:
        shapes = sorted({"x".join(str(v) for v in s[1:]) for s in cams.values()})
        parts.append(f"{len(cams)} cam {'/'.join(shapes)}")
    parts.append(f"state {c.get('state')}" + (f" + env {c['env']}" if c.get("env") else ""))
    kind = cfg.pop("noise_scheduler_type", None)
    k = cfg.pop("num_inference_steps", "default")
    for key, label in _SHORT.items():
        if key in cfg and _QUIET.get(key, object()) != cfg[key]:
            v = cfg[key]
            parts.append(f"{label} {list(v) if isinstance(v, (list, tuple)) else v}")
    parts.append(f"{kind} K={k}" if kind else "default scheduler (DDPM, K=T)")
    if "0.6" in str(meta.get("reference")):  # what 0.6 changed, when the case keeps its default
        if "horizon" not in cfg:
            parts.append("horizon 64 + n_action 32 (defaults)")
        elif "n_action_steps" not in cfg:
            parts.append("n_action 32 (default: LeRobot executes horizon - n_obs + 1)")
        if cams and "use_group_norm" not in cfg:
            parts.append("BatchNorm (default)")
        if len(cams) > 1 and "use_separate_rgb_encoder_per_camera" not in cfg:
            parts.append("one encoder per camera (default)")
    if c.get("norm"):
        parts.append("norm " + ", ".join(f"{a}:{b}" for a, b in c["norm"].items()))
    if c.get("after"):
        parts.append("config.json then set " + ", ".join(f"{a}={b}" for a, b in c["after"].items()))
    return ", ".join(parts)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    dirs = [Path(a) for a in argv if (Path(a) / "case.json").is_file()]
    print("| case | reference | configuration | edgedp |\n|---|---|---|---|")
    bad = 0
    for d in dirs:
        r = check_case(d)
        bad += r.status == "MISMATCH"
        print(r.row(), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
