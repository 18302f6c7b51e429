"""LeRobot's own Diffusion Policy as the benchmark reference, run in its own venv (``bench --vs-lerobot``).

Why a subprocess in another venv: LeRobot pins its own torch, and the headline ratio has to be
against what users run (LeRobot's ``select_action``), not against edgedp's eager loop.  Both sides
run the SAME weights: a LeRobot ``pretrained_model`` directory is loaded by LeRobot there and imported
by edgedp here; for a preset, LeRobot itself writes that directory first (``lerobot_child.py make``).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from edgedp.errors import UserError, one_line

DEFAULT_PYTHON = "/work/venvs/lerobot044/bin/python"
CHILD = Path(__file__).resolve().with_name("lerobot_child.py")
_STARTUP_S = 600.0


def default_python() -> str:
    return os.environ.get("EDGEDP_LEROBOT_PYTHON", DEFAULT_PYTHON)


def check_python(python: str) -> str:
    """The interpreter exists and imports lerobot; otherwise one line saying which."""
    if not Path(python).is_file():
        raise UserError(f"--lerobot-python {python}: no such interpreter (make a venv with lerobot==0.4.4 "
                        f"and point --lerobot-python at its bin/python)")
    try:
        r = subprocess.run([python, "-c", "import lerobot, torch; print(lerobot.__version__)"],
                           capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:  # not executable, not a program, or hangs on import
        raise UserError(f"--lerobot-python {python}: cannot run it ({type(exc).__name__}: {one_line(exc)})") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["import failed"])[-1]
        raise UserError(f"--lerobot-python {python}: cannot import lerobot ({last})")
    return r.stdout.strip()


def lerobot_config(spec: Any, steps: int) -> dict[str, Any]:
    """The ``DiffusionConfig`` fields that make LeRobot build the same network as `spec`.

    Raises UserError when LeRobot's DiffusionPolicy has no equivalent (it only builds a full-width
    torchvision ResNet with spatial softmax and a 1-D conv U-Net)."""
    enc, unet, sch = spec.encoder, spec.unet, dict(spec.scheduler)
    problems = []
    if spec.denoiser != "unet":
        problems.append(f"denoiser {spec.denoiser} (LeRobot's DiffusionPolicy has only the U-Net)")
    if enc.width != 64:
        problems.append(f"encoder width {enc.width} (LeRobot builds the full ResNet, width 64)")
    if enc.pool != "spatial_softmax" or not enc.project or not enc.relu or enc.feature_dim != 2 * enc.num_keypoints:
        problems.append("encoder head (LeRobot: spatial softmax -> Linear(2*keypoints) -> ReLU)")
    if enc.imagenet_norm or enc.softmax_layout != "lerobot" or enc.resize_shape:
        problems.append("encoder preprocessing (ImageNet norm / robomimic softmax / resize)")
    if sch.get("kind") not in ("ddim", "ddpm"):
        problems.append(f"sampler {sch.get('kind')}")
    if len({tuple(s) for s in spec.image_features.values()}) > 1:
        problems.append("cameras of different shapes")
    if problems:
        raise UserError(f"--vs-lerobot: {spec.name or 'this policy'} has no LeRobot equivalent: " + "; ".join(problems))
    cfg = dict(
        n_obs_steps=spec.n_obs_steps, horizon=spec.horizon, n_action_steps=spec.n_action_steps,
        vision_backbone=enc.backbone, use_group_norm=enc.norm == "group",
        spatial_softmax_num_keypoints=enc.num_keypoints, use_separate_rgb_encoder_per_camera=not enc.shared,
        down_dims=list(unet.down_dims), kernel_size=unet.kernel_size, n_groups=unet.n_groups,
        diffusion_step_embed_dim=unet.diffusion_step_embed_dim, use_film_scale_modulation=unet.cond_predict_scale,
        noise_scheduler_type=sch["kind"].upper(), num_train_timesteps=int(sch.get("num_train_timesteps", 100)),
        beta_schedule=sch.get("beta_schedule", "squaredcos_cap_v2"), clip_sample=bool(sch.get("clip_sample", True)),
        prediction_type=sch.get("prediction_type", "epsilon"), num_inference_steps=int(steps),
    )
    if enc.crop_shape:
        cfg["crop_shape"] = list(enc.crop_shape)
    else:
        cfg["crop_shape"] = None
    return cfg


def _stats(spec: Any) -> dict[str, dict[str, list]]:
    """Plausible dataset stats (images ImageNet mean/std, vectors in [-1, 1] x 100): only their shapes matter
    for timing, and edgedp imports whatever LeRobot writes."""
    out: dict[str, dict[str, list]] = {}
    for key in spec.image_features:
        out[key] = {"mean": [[[0.485]], [[0.456]], [[0.406]]], "std": [[[0.229]], [[0.224]], [[0.225]]],
                    "min": [[[0.0]]] * 3, "max": [[[1.0]]] * 3}
    for key, shape in [*spec.state_features.items(), ("action", [spec.action_dim])]:
        d = int(shape[0])
        out[key] = {"mean": [0.0] * d, "std": [50.0] * d, "min": [-100.0] * d, "max": [100.0] * d}
    return out


def make_reference_dir(spec: Any, steps: int, python: str, out: Path, seed: int = 0) -> Path:
    """LeRobot writes a randomly initialised pretrained_model dir of `spec`'s architecture (cached by content)."""
    req = {"images": spec.image_features, "states": spec.state_features, "action_dim": spec.action_dim,
           "stats": _stats(spec), "config": lerobot_config(spec, steps)}
    import hashlib

    digest = hashlib.sha256(json.dumps([req, seed], sort_keys=True).encode()).hexdigest()[:16]
    target = out / f"{spec.name or 'policy'}-{digest}"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from firmware_bridge.atomic_file import replace_dir

    tmp = out / f".{target.name}.tmp{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([python, str(CHILD), "make", "--out", str(tmp), "--config", json.dumps(req),
                        "--seed", str(seed)], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        last = (r.stderr.strip().splitlines() or ["failed"])[-1]
        raise UserError(f"--vs-lerobot: LeRobot could not build {spec.name}: {last}")
    replace_dir(tmp, target)
    return target


class LeRobotReference:
    """A long-lived LeRobot process that times whole chunks on request (JSON lines over a pipe)."""

    def __init__(self, python: str, model_dir: Path, steps: int, threads: int = 1):
        self.proc = subprocess.Popen([python, str(CHILD), "serve", "--dir", str(model_dir), "--steps", str(steps),
                                      "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.info = self._read()
        if not self.info.get("ready"):
            self.close()
            raise UserError(f"--vs-lerobot: LeRobot reference did not start: {self.info}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        last = (err.strip().splitlines() or ["exited"])[-1]
        raise UserError(f"--vs-lerobot: LeRobot reference stopped: {last}")

    def time_chunks(self, n: int = 1) -> list[float]:
        """Milliseconds of `n` chunks, each timed inside the child (no pipe latency in the figure)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"n": int(n)}) + "\n")
        self.proc.stdin.flush()
        return list(self._read()["ms"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "LeRobotReference":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def resolve(checkpoint: str, policy: Any, steps: int, python: str, cache: Path) -> Path:
    """The LeRobot dir both sides load: the checkpoint itself when it is one, else one LeRobot writes."""
    from models.checkpoint_import.lerobot import CheckpointError, resolve_dir

    if not checkpoint.startswith("preset:"):
        try:
            return resolve_dir(checkpoint)
        except CheckpointError:
            pass
    return make_reference_dir(policy.spec, steps, python, cache)


__all__ = ["DEFAULT_PYTHON", "LeRobotReference", "check_python", "default_python", "lerobot_config",
           "make_reference_dir", "resolve"]
