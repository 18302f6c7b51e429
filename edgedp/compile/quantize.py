"""Calibration observations, per-layer INT8 sensitivity, and the accuracy gate.

Why a gate: int8 weights change every denoiser output a little, and K steps compound it.  The
only number that matters to the robot is how far the *actions* move, so the gate runs the
float32 sampler and the candidate from the same observation and the same initial (and per-step)
noise, on observations held out from calibration, and reports RMSE and max |error| in
normalized action units (the policy's [-1, 1] action space).

Where observations come from (documented in docs/compile.md):
* ``--calib FILE.npz``: recorded observations, one array per policy feature key with a leading
  sample axis, shape (N, n_obs_steps, ...) (images uint8 HxWx3 or float 3xHxW in [0, 1]).
  The first half calibrates, the second half is held out for the gate.
* ``--calib DATASET_DIR``: an edgedp episode dataset (``edgedp record``).  Observation windows are
  built as training builds them (frames t-n_obs+1..t, clamped at the episode start); episodes are
  split into a calibration half and a held-out half, so the gate never sees an episode the
  calibration saw (a window from a seen episode shares frames with the calibration windows).
* ``--calib sim``: frames rendered by the simulated scene (firmware_bridge/sim): random arm poses
  within the joint limits, a short motion between the n_obs frames, random targets.  The default
  when the checkpoint's features are the sim's (one 3-channel image, a 2-joint state) or it was
  trained by ``edgedp train``: those are the observations it will see at run time.
* ``--calib synthetic`` (the default for any other checkpoint): top-down scenes of coloured blocks
  and discs on a plain table for images, and states drawn uniformly inside the policy's own
  normalization range.  Calibration and gate use different seeds.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Normalized action units ([-1, 1]).  Set after measuring what the same float32 policy already
# varies by: DDIM K=10 vs K=16 from the same noise moves actions by RMSE ~0.2 on both presets, and
# a different initial noise by ~0.8 (docs/compile.md).  0.05 is a quarter of the K change.
DEFAULT_MAX_RMSE = 0.05
DEFAULT_MAX_ABS = 0.20
DEFAULT_LAYER_TOL = 0.08
SMOOTH_DEFAULT = os.environ.get("EDGEDP_INT8_SMOOTH", "1") == "1"


# ---------------------------------------------------------------- observations
def _synthetic_image(rng: np.random.Generator, shape: tuple[int, int, int], n_obs: int) -> np.ndarray:
    """(n_obs, H, W, 3) uint8: a table with a few blocks/discs that move slightly between frames."""
    _, h, w = shape
    base = rng.uniform(180, 240, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    shapes = []
    for _ in range(int(rng.integers(2, 5))):
        shapes.append((rng.uniform(0, 1, 2) * (h, w), rng.uniform(0.06, 0.2) * min(h, w),
                       rng.uniform(20, 230, size=3), bool(rng.integers(0, 2)), rng.normal(0, 1.5, 2)))
    frames = []
    for f in range(n_obs):
        img = np.empty((h, w, 3), np.float32)
        img[:] = base
        for (cy, cx), r, color, disc, vel in shapes:
            cy, cx = cy + vel[0] * f, cx + vel[1] * f
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if disc else \
                ((np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r * 0.6))
            img[mask] = color
        img += rng.normal(0, 3, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _synthetic_state(rng: np.random.Generator, policy: Any, key: str, dim: int, n_obs: int) -> np.ndarray:
    z = torch.from_numpy(rng.uniform(-0.9, 0.9, size=(n_obs, dim)).astype(np.float32))
    norm = policy.normalizers[key]
    raw = z if norm.mode == "identity" else norm.unnormalize(z)
    return raw.numpy().astype(np.float32)


def synthetic_observations(policy: Any, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        obs: dict[str, np.ndarray] = {}
        for k, shape in policy.spec.image_features.items():
            obs[k] = _synthetic_image(rng, tuple(shape), policy.n_obs_steps)
        for k, shape in policy.spec.state_features.items():
            obs[k] = _synthetic_state(rng, policy, k, int(shape[0]), policy.n_obs_steps)
        out.append(obs)
    return out


def recorded_observations(path: str | Path, policy: Any) -> list[dict[str, np.ndarray]]:
    from edgedp.errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"calibration file not found: {p}")
    try:
        data = np.load(p)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"calibration file {p} is not a readable .npz ({exc.__class__.__name__})") from None
    keys = list(policy.spec.image_features) + list(policy.spec.state_features)
    missing = [k for k in keys if k not in data.files]
    if missing:
        raise UserError(f"calibration file {p} lacks feature(s) {', '.join(missing)} (has: {', '.join(data.files)})")
    n = min(int(data[k].shape[0]) for k in keys)
    if n < 2:
        raise UserError(f"calibration file {p} holds {n} observation(s); at least 2 are needed (calibrate + hold out)")
    return [{k: data[k][i] for k in keys} for i in range(n)]


SIM_JOINTS = 2  # the simulated planar arm (firmware_bridge/sim): what a sim-task checkpoint's state holds
SIM_MAX_SPEED = 1.5  # rad/s: the recorder's expert moves no faster, so frame-to-frame motion stays in range
SIM_PERIOD = 0.1  # s between observation frames (examples/sim.yaml's action period)


def matches_sim(policy: Any) -> bool:
    """True for a checkpoint that sees what the simulated scene shows: one RGB image and the arm's joints.

    Provenance counts too: a checkpoint written by ``edgedp train`` was trained on sim episodes.
    """
    spec = policy.spec
    prov = getattr(spec, "provenance", None) or {}
    if isinstance(prov, dict) and prov.get("command") == "edgedp train":
        return True
    images = list(spec.image_features.values())
    states = list(spec.state_features.values())
    return (len(images) == 1 and int(images[0][0]) == 3 and len(states) == 1
            and int(states[0][0]) == SIM_JOINTS)


def sim_observations(policy: Any, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Observation windows rendered by the simulated scene at random arm poses and targets.

    Each sample: a target drawn by the scene (seeded), the newest pose uniform within the joint
    limits, and earlier frames stepped back along a random direction at up to the expert's speed,
    so the n_obs frames show the motion a running arm shows.
    """
    from edgedp.errors import UserError
    from firmware_bridge.sim.scene import DEFAULT_JOINT_LIMITS, Scene

    if not matches_sim(policy):
        raise UserError("--calib sim needs a checkpoint whose features match the simulated scene (one RGB image "
                        f"and a {SIM_JOINTS}-joint state); this one has images {dict(policy.spec.image_features)} "
                        f"and states {dict(policy.spec.state_features)}")
    (img_key, img_shape), = policy.spec.image_features.items()
    (state_key, _), = policy.spec.state_features.items()
    _, h, w = (int(x) for x in img_shape)
    lim = np.asarray(DEFAULT_JOINT_LIMITS, dtype=np.float64)
    rng = np.random.default_rng(seed)
    q = np.zeros(SIM_JOINTS)
    scene = Scene(lambda: q, width=w, height=h, seed=seed, depth=False)
    out = []
    for _ in range(n):
        scene.reset(int(rng.integers(0, 2**31 - 1)))
        q_now = rng.uniform(lim[:, 0], lim[:, 1])
        direction = rng.normal(size=SIM_JOINTS)
        step = direction / max(float(np.linalg.norm(direction)), 1e-9) * rng.uniform(0, SIM_MAX_SPEED) * SIM_PERIOD
        frames, states = [], []
        for back in range(policy.n_obs_steps - 1, -1, -1):
            q[:] = np.clip(q_now - back * step, lim[:, 0], lim[:, 1])
            frames.append(scene.render()[0])
            states.append(q.astype(np.float32))
        out.append({img_key: np.stack(frames), state_key: np.stack(states)})
    return out


def _episode_windows(ep: dict[str, np.ndarray], ts: np.ndarray, n_obs: int, img_key: str, state_key: str
                     ) -> list[dict[str, np.ndarray]]:
    """Frames t-n_obs+1..t clamped at the episode start: edgedp.sim_task.train.WindowSampler's rule."""
    from edgedp.sim_task.dataset import IMAGE_KEY, STATE_KEY

    out = []
    for t in ts:
        idx = np.clip(np.arange(int(t) - n_obs + 1, int(t) + 1), 0, len(ep[STATE_KEY]) - 1)
        out.append({img_key: ep[IMAGE_KEY][idx], state_key: ep[STATE_KEY][idx].astype(np.float32)})
    return out


def dataset_observations(path: str | Path, policy: Any, n_calib: int, n_heldout: int, seed: int = 0
                         ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], dict[str, Any]]:
    """(calibration windows, held-out windows, split) from an edgedp episode dataset.

    Episodes, not windows, are split (shuffled by `seed`, first half calibrates): consecutive
    windows of one episode share frames, so a window-level split would leak into the gate.
    """
    from edgedp.errors import UserError
    from edgedp.datasets.episodes import open_episodes
    from edgedp.sim_task.dataset import IMAGE_KEY, STATE_KEY, DatasetError

    try:
        ds = open_episodes(path)  # LeRobot v3.0 (what `edgedp record` writes) or an old .npz set
    except DatasetError as exc:
        raise UserError(f"--calib: {exc}") from None
    imgs, states = policy.spec.image_features, policy.spec.state_features
    if len(imgs) != 1 or len(states) != 1:
        raise UserError(f"--calib {path}: an episode dataset holds one image and one state, but the checkpoint "
                        f"wants images {list(imgs)} and states {list(states)}")
    (img_key, img_shape), = imgs.items()
    (state_key, state_shape), = states.items()
    feats = ds.info.get("features", {})
    ds_img = list(feats.get(IMAGE_KEY, {}).get("shape", []))
    ds_state = list(feats.get(STATE_KEY, {}).get("shape", []))
    want_img = [int(img_shape[1]), int(img_shape[2]), int(img_shape[0])]
    if ds_img != want_img or ds_state != [int(state_shape[0])]:
        raise UserError(f"--calib {path}: dataset features image {ds_img}, state {ds_state} do not match the "
                        f"checkpoint's image {want_img} (HxWxC), state {[int(state_shape[0])]}")
    if len(ds) < 2:
        raise UserError(f"--calib {path}: {len(ds)} episode(s); at least 2 are needed (one to calibrate, one held out)")
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(ds))]
    half = len(order) // 2
    split = {"calib_episodes": sorted(order[:half]), "heldout_episodes": sorted(order[half:])}

    def draw(episodes: list[int], n: int) -> list[dict[str, np.ndarray]]:
        # Spread n windows over the episodes (round robin), each at a random time step.
        per: dict[int, int] = {}
        for j in range(n):
            e = episodes[j % len(episodes)]
            per[e] = per.get(e, 0) + 1
        out = []
        for e, k in per.items():
            ep = ds.load_episode(e)
            ts = rng.integers(0, len(ep[STATE_KEY]), size=k)
            out.extend(_episode_windows(ep, ts, policy.n_obs_steps, img_key, state_key))
        return out

    return draw(split["calib_episodes"], n_calib), draw(split["heldout_episodes"], n_heldout), split


@dataclass
class ObservationSets:
    """Global conditions for calibration and for the held-out gate, with where they came from."""

    calib: torch.Tensor
    heldout: torch.Tensor
    source: str
    detail: dict[str, Any] = field(default_factory=dict)
    # The raw observations behind `calib` / `heldout`: what a build calibrates a quantized encoder on (activation
    # ranges need images, not features) and checks it against.
    calib_observations: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)
    heldout_observations: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)


def default_calib_source(policy: Any) -> str:
    """What calibrates when no --calib is given: the sim scene for sim checkpoints, synthetic scenes otherwise."""
    return "sim" if matches_sim(policy) else "synthetic"


def observation_sets(policy: Any, source: str | Path | None = None, n_calib: int = 8, n_heldout: int = 8,
                     seed: int = 0) -> ObservationSets:
    from edgedp.errors import UserError

    src_arg = str(source) if source else default_calib_source(policy)
    detail: dict[str, Any] = {"kind": src_arg if src_arg in ("sim", "synthetic") else None}
    if src_arg == "sim":
        cal = sim_observations(policy, n_calib, seed)
        held = sim_observations(policy, n_heldout, seed + 10_000)
        src = "simulated-scene"
    elif src_arg == "synthetic":
        cal = synthetic_observations(policy, n_calib, seed)
        held = synthetic_observations(policy, n_heldout, seed + 10_000)
        src = "synthetic"
    elif Path(src_arg).is_dir():
        cal, held, split = dataset_observations(src_arg, policy, n_calib, n_heldout, seed)
        src = f"dataset:{src_arg}"
        detail = {"kind": "dataset", "path": str(Path(src_arg).resolve()), **split}
    elif Path(src_arg).is_file():
        obs = recorded_observations(src_arg, policy)
        half = len(obs) // 2
        cal, held, src = obs[:half], obs[half:], f"recorded:{src_arg}"
        detail = {"kind": "npz", "path": str(Path(src_arg).resolve()), "calib_samples": half,
                  "heldout_samples": len(obs) - half}
    else:
        raise UserError(f"--calib {src_arg}: not found (give an episode dataset folder, a .npz, 'sim' or 'synthetic')")
    detail.update({"n_calib": len(cal), "n_heldout": len(held), "seed": seed})
    enc = lambda xs: torch.cat([policy.encode(o).float().cpu() for o in xs], dim=0)  # noqa: E731
    with torch.inference_mode():
        return ObservationSets(enc(cal), enc(held), src, detail, list(cal), list(held))


def fixed_noise(policy: Any, n: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial noise (n,1,T,A) and per-step variance noise (n,K,1,T,A), reproducible by seed."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, 1, policy.horizon, policy.action_dim), generator=g)
    vnoise = torch.randn((n, steps, 1, policy.horizon, policy.action_dim), generator=g)
    return noise, vnoise


# ---------------------------------------------------------------- sensitivity
def _record_layer_inputs(policy: Any, conds: torch.Tensor, steps: int, keep: int = 12
                         ) -> tuple[dict[str, list[torch.Tensor]], dict[str, torch.Tensor], nn.Module]:
    """Run the float32 loop on the calibration conditions, keeping a spread of each layer's inputs
    and, over every call, each layer's per-input-channel max |activation|."""
    from edgedp.compile.base import FloatOut, float_unet_copy, make_loop
    from edgedp.compile.int8 import QUANT_TYPES

    unet = float_unet_copy(policy, torch.device("cpu"), "fp32")
    loop = make_loop(policy, FloatOut(unet), steps, torch.device("cpu"))
    total_calls = max(1, steps * conds.shape[0])
    stride = max(1, total_calls // keep)
    seen: dict[str, int] = {}
    store: dict[str, list[torch.Tensor]] = {}
    absmax: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in unet.named_modules():
        if isinstance(mod, QUANT_TYPES):
            def hook(m, args, _name=name):
                x = args[0].detach()
                chan = x.abs().amax(dim=tuple(range(x.dim() - 1))) if isinstance(m, nn.Linear) \
                    else x.abs().amax(dim=(0, 2))
                absmax[_name] = chan if _name not in absmax else torch.maximum(absmax[_name], chan)
                i = seen.get(_name, 0)
                seen[_name] = i + 1
                if i % stride == 0 and len(store.setdefault(_name, [])) < keep:
                    store[_name].append(args[0].detach().clone())
            handles.append(mod.register_forward_pre_hook(hook))
    noise, vnoise = fixed_noise(policy, conds.shape[0], steps, seed=1234)
    with torch.inference_mode():
        for i in range(conds.shape[0]):
            loop(noise[i], conds[i: i + 1], vnoise[i] if loop.needs_variance_noise else None)
    for h in handles:
        h.remove()
    return store, absmax, unet


def sensitive_layers(policy: Any, calib: "ObservationSets | torch.Tensor", steps: int,
                     tol: float = DEFAULT_LAYER_TOL) -> tuple[list[str], dict[str, float]]:
    """Layers whose int8 output differs from float32 by more than `tol` (relative L2) stay float."""
    skip, _, errors = calibrate_int8(policy, calib, steps, tol)
    return skip, errors


def calibrate_int8(policy: Any, calib: "ObservationSets | torch.Tensor", steps: int,
                   tol: float = DEFAULT_LAYER_TOL, smooth: bool | None = None
                   ) -> tuple[list[str], dict[str, torch.Tensor], dict[str, float]]:
    """(float layers, per-layer activation maxima for smoothing, per-layer relative int8 error)."""
    from edgedp.compile.int8 import _lower

    conds = calib.calib if isinstance(calib, ObservationSets) else calib
    # About 100 denoiser calls give every layer a spread of noise levels; more only costs time
    # (at K = 100 each observation already covers the whole schedule).
    conds = conds[: max(1, 100 // max(1, steps))]
    store, absmax, unet = _record_layer_inputs(policy, conds, steps)
    if not (SMOOTH_DEFAULT if smooth is None else smooth):
        absmax = {}
    modules = dict(unet.named_modules())
    errors: dict[str, float] = {}
    with torch.inference_mode():
        for name, inputs in store.items():
            ref_mod = modules[name]
            q = _lower(ref_mod, absmax.get(name))
            num = den = 0.0
            for x in inputs:
                ref = ref_mod(x)
                num += float((q(x) - ref).pow(2).sum())
                den += float(ref.pow(2).sum())
            errors[name] = math.sqrt(num / max(den, 1e-30))
    skip = sorted(n for n, e in errors.items() if e > tol)
    return skip, absmax, errors


def denoiser_calibration_inputs(policy: Any, calib: Any, steps: int, device: torch.device):
    """(x_k, k, cond) triples along float32 trajectories: what INT8 PTQ for TensorRT calibrates on."""
    from edgedp.compile.base import FloatOut, float_unet_copy, make_loop

    conds = calib.calib if isinstance(calib, ObservationSets) else observation_sets(policy).calib
    unet = float_unet_copy(policy, device, "fp32")
    samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    class Tap(nn.Module):
        def forward(self, x, t, g):
            samples.append((x.clone(), t.clone(), g.clone()))
            return unet(x, t, g)

    loop = make_loop(policy, FloatOut(Tap()), steps, device)
    noise, _ = fixed_noise(policy, conds.shape[0], steps, seed=4321)
    with torch.inference_mode():
        for i in range(conds.shape[0]):
            loop(noise[i].to(device), conds[i: i + 1].to(device))
    return samples


# ---------------------------------------------------------------- the gate
@dataclass
class GateResult:
    rmse: float
    max_abs: float
    max_rmse: float
    max_abs_limit: float
    n: int
    source: str

    @property
    def passed(self) -> bool:
        return self.rmse <= self.max_rmse and self.max_abs <= self.max_abs_limit

    def line(self) -> str:
        verdict = "within" if self.passed else "EXCEEDS"
        return (f"action error vs float32 on {self.n} held-out {self.source} observations: "
                f"RMSE {self.rmse:.4f}, max {self.max_abs:.4f} (normalized units; {verdict} the gate "
                f"RMSE <= {self.max_rmse:g}, max <= {self.max_abs_limit:g})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def action_error(reference: Any, candidate: Any, conds: torch.Tensor, steps: int, seed: int = 777) -> tuple[float, float]:
    """RMSE and max |a - a_ref| over all held-out samples, same initial and per-step noise for both."""
    noise, vnoise = fixed_noise(reference.policy, conds.shape[0], steps, seed)
    sq = 0.0
    count = 0
    worst = 0.0
    for i in range(conds.shape[0]):
        g = conds[i: i + 1]
        v = vnoise[i] if reference.stochastic else None
        a_ref = reference(g, noise[i], v).float().cpu()
        a = candidate(g, noise[i], v).float().cpu()
        d = a - a_ref
        sq += float(d.pow(2).sum())
        count += d.numel()
        worst = max(worst, float(d.abs().max()))
    return math.sqrt(sq / max(count, 1)), worst


def observation_action_error(reference: Any, candidate: Any, observations: list, steps: int,
                             seed: int = 778) -> tuple[float, float]:
    """RMSE and max |a - a_ref| from raw observations: each side through its OWN encoder (so a compiled or
    quantized encoder's error is counted), same initial and per-step noise for both."""
    noise, vnoise = fixed_noise(reference.policy, len(observations), steps, seed)
    sq, count, worst = 0.0, 0, 0.0
    for i, obs in enumerate(observations):
        v = vnoise[i] if reference.stochastic else None
        a_ref = reference(reference.encode(obs), noise[i], v).float().cpu()
        a = candidate(candidate.encode(obs), noise[i], v).float().cpu()
        d = a - a_ref
        sq += float(d.pow(2).sum())
        count += d.numel()
        worst = max(worst, float(d.abs().max()))
    return math.sqrt(sq / max(count, 1)), worst


def accuracy_gate(reference: Any, candidate: Any, sets: ObservationSets, steps: int,
                  max_rmse: float = DEFAULT_MAX_RMSE, max_abs: float = DEFAULT_MAX_ABS) -> GateResult:
    rmse, worst = action_error(reference, candidate, sets.heldout, steps)
    return GateResult(rmse, worst, max_rmse, max_abs, int(sets.heldout.shape[0]), sets.source)
