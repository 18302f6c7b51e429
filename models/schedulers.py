"""DDPM and DDIM noise schedulers as plain tensor math, numerically matching diffusers.

Why not import diffusers at run time: the board image should not carry it, its step() has
data-dependent Python control flow (``if t > 0``, index look-ups with ``.nonzero()``) that
breaks graph capture, and its behaviour changed between the version the original Diffusion
Policy code used (0.11.1) and the one LeRobot uses (0.35). Here every quantity a step needs is
computed once, per inference step, into small float32 tables (:class:`StepTable`); a step is
then a handful of tensor multiply-adds that read those tables. The :class:`~models.sampler.Sampler`
uses the very same kernel (:func:`apply_step`), so the compiled loop and the step-by-step
scheduler cannot drift apart.

The tables are built with the same float32 tensor operations, in the same order, as diffusers,
so a step here is bit-identical to diffusers' step in eager float32 on the CPU (the tests check
this to 1e-6 and the recorded reference arrays bit-for-bit where they allow it).

Only torch, numpy and the standard library are imported (``models/`` rule).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch

KINDS = ("ddpm", "ddim", "dpmsolver++", "unipc")
# Multistep ODE solvers on the same trained weights (models/multistep.py); they have no step_table.
SOLVER_KINDS = ("dpmsolver++", "unipc")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
DDPM_PREV_RULES = ("schedule", "t_minus_one")

# diffusers releases up to this one step DDPM from t to t-1 (rule "t_minus_one");
# 0.13.0 introduced prev_t = t - N // K (later: the next entry of the timestep list).
_LAST_T_MINUS_ONE_RELEASE = (0, 12, 1)


@dataclass
class SchedulerSpec:
    """Everything that decides the numbers a sampler produces, and nothing else.

    Defaults are those of Diffusion Policy checkpoints (100 train steps, squared-cosine betas,
    clipped epsilon prediction), not diffusers' defaults (1000 steps, linear betas): a spec
    made by hand for a DP checkpoint should need no arguments but ``kind``.

    ``ddpm_prev_rule`` picks which diffusers generation's DDPM step is reproduced:

    * ``"schedule"`` (diffusers >= 0.13, LeRobot): the previous timestep is the next entry of
      the inference schedule (t - N//K for "leading" spacing), -1 after the last, and the
      per-step beta is re-derived as ``1 - a_t / a_prev``.
    * ``"t_minus_one"`` (diffusers <= 0.12.1, the original Diffusion Policy code): every step
      goes from t to t-1 whatever the schedule, with the trained ``betas[t]`` / ``alphas[t]``,
      and the schedule is ``arange(0, N, N // K)`` reversed (which may hold more than K steps).

    The two agree (to float rounding) when K equals num_train_timesteps; they give different
    trajectories for K < N.
    """

    kind: str = "ddpm"
    num_train_timesteps: int = 100
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    variance_type: str = "fixed_small"
    timestep_spacing: str = "leading"
    num_inference_steps: int | None = None
    eta: float = 0.0
    ddpm_prev_rule: str = "schedule"
    # Explicit descending train timesteps for the multistep solvers (policy.timesteps, a run option like
    # policy.sampler: the policy's configure_sampler sets it, checkpoints never carry it). None = the spacing.
    timesteps: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Reject a spec that diffusers would reject or that we would silently mis-compute."""
        _choice("kind", self.kind, KINDS)
        _choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _choice("variance_type", self.variance_type, VARIANCE_TYPES)
        _choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        _choice("ddpm_prev_rule", self.ddpm_prev_rule, DDPM_PREV_RULES)
        _int_at_least("num_train_timesteps", self.num_train_timesteps, 1)
        _int_at_least("steps_offset", self.steps_offset, 0)
        for name in ("clip_sample", "set_alpha_to_one"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"scheduler {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("beta_start", "beta_end", "clip_sample_range", "eta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"scheduler {name} must be a finite number, got {value!r}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0 and self.beta_schedule != "squaredcos_cap_v2":
            raise ValueError(
                f"scheduler beta_start/beta_end must satisfy 0 < beta_start <= beta_end < 1, "
                f"got {self.beta_start!r}/{self.beta_end!r}"
            )
        if self.clip_sample_range <= 0:
            raise ValueError(f"scheduler clip_sample_range must be > 0, got {self.clip_sample_range!r}")
        if self.eta < 0:
            raise ValueError(f"scheduler eta must be >= 0, got {self.eta!r}")
        if self.kind != "ddim" and self.eta != 0.0:
            raise ValueError(f"scheduler eta applies to kind 'ddim' only, not {self.kind!r}")
        if self.kind == "ddpm" and self.ddpm_prev_rule == "t_minus_one":
            if self.steps_offset != 0:
                raise ValueError("scheduler steps_offset must be 0 with ddpm_prev_rule 't_minus_one' (diffusers <= 0.12 had none)")
            if self.timestep_spacing != "leading":
                raise ValueError("scheduler timestep_spacing must be 'leading' with ddpm_prev_rule 't_minus_one'")
        if self.timesteps is not None:
            self.timesteps = check_custom_timesteps(self.kind, self.num_train_timesteps, self.timesteps)
        if self.num_inference_steps is not None:
            check_num_inference_steps(self, self.num_inference_steps)

    # ------------------------------------------------------------------ dict I/O
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of this spec's own field names; ``from_dict(to_dict())`` round-trips."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> SchedulerSpec:
        """Build a spec from our own keys or a diffusers-style scheduler config.

        Accepted besides our field names: ``_target_`` / ``_class_name`` (a class path or name
        ending in DDPMScheduler / DDIMScheduler, which sets ``kind``), ``noise_scheduler_type``
        ("DDPM"/"DDIM", LeRobot), ``_diffusers_version`` (picks ``ddpm_prev_rule`` when that is
        not given), ``predict_epsilon`` (pre-0.12 spelling of prediction_type), ``timesteps`` only as None (explicit
        timesteps are a run option, set by DiffusionPolicy.configure_sampler, never a checkpoint's), and diffusers
        options we can honour only at their neutral value (``trained_betas`` None,
        ``thresholding`` / ``rescale_betas_zero_snr`` False; ``dynamic_thresholding_ratio`` and
        ``sample_max_value`` are then unused). Any other key is an error, so a config option we
        do not implement can never be dropped silently.
        """
        raw = dict(data)
        raw.update(overrides)
        own = {f.name for f in fields(cls)}
        out: dict[str, Any] = {}
        kind_sources: list[tuple[str, str]] = []
        version: tuple[int, ...] | None = None
        for key, value in raw.items():
            if key == "timesteps":  # a run option (policy.timesteps), never read from a checkpoint's scheduler
                if value is not None:
                    raise ValueError("scheduler timesteps is a run option (policy.timesteps / configure_sampler), "
                                     "not a checkpoint setting")
            elif key in own:
                out[key] = value
            elif key in ("_target_", "_class_name"):
                kind_sources.append((key, _kind_from_class(key, value)))
            elif key == "noise_scheduler_type":
                kind_sources.append((key, _kind_from_type_name(value)))
            elif key == "_diffusers_version":
                version = _parse_version(value)
            elif key == "predict_epsilon":
                if value is None:
                    continue
                if not isinstance(value, bool):
                    raise ValueError(f"scheduler predict_epsilon must be true or false, got {value!r}")
                pred_type = "epsilon" if value else "sample"
                if "prediction_type" in raw and raw["prediction_type"] != pred_type:
                    raise ValueError(
                        f"scheduler predict_epsilon={value} contradicts prediction_type={raw['prediction_type']!r}"
                    )
                out["prediction_type"] = pred_type
            elif key == "trained_betas":
                if value is not None:
                    raise ValueError("scheduler trained_betas (an explicit beta table) is not supported; use beta_schedule")
            elif key in ("thresholding", "rescale_betas_zero_snr"):
                if value not in (False, None):
                    raise ValueError(f"scheduler {key}={value!r} is not supported (only false)")
            elif key in ("dynamic_thresholding_ratio", "sample_max_value"):
                if raw.get("thresholding") not in (False, None):
                    raise ValueError(f"scheduler {key} is only meaningful with thresholding, which is not supported")
            else:
                allowed = sorted(own | {"_target_", "_class_name", "noise_scheduler_type", "_diffusers_version",
                                        "predict_epsilon", "trained_betas", "thresholding", "rescale_betas_zero_snr",
                                        "dynamic_thresholding_ratio", "sample_max_value"})
                raise ValueError(f"unknown scheduler option {key!r} (known: {', '.join(allowed)})")
        for source, kind in kind_sources:
            if out.setdefault("kind", kind) != kind:
                raise ValueError(f"scheduler {source} says {kind!r} but kind is {out['kind']!r}")
        if version is not None and "ddpm_prev_rule" not in out:
            out["ddpm_prev_rule"] = "t_minus_one" if version <= _LAST_T_MINUS_ONE_RELEASE else "schedule"
        # YAML/JSON give ints where floats are meant (beta_end: 0 is unlikely, eta: 0 is common).
        for name in ("beta_start", "beta_end", "clip_sample_range", "eta"):
            if name in out and isinstance(out[name], int) and not isinstance(out[name], bool):
                out[name] = float(out[name])
        return cls(**out)

    # ------------------------------------------------------------------ derived
    def resolved_steps(self, num_inference_steps: int | None = None) -> int:
        """K asked for: the argument, else the spec's default, else the length of explicit timesteps, else
        num_train_timesteps (as DP and LeRobot do)."""
        k = num_inference_steps if num_inference_steps is not None else self.num_inference_steps
        if k is None and self.timesteps is not None:
            k = len(self.timesteps)
        k = self.num_train_timesteps if k is None else k
        check_num_inference_steps(self, k)
        return int(k)


def check_num_inference_steps(spec: SchedulerSpec, k: Any) -> None:
    """K must be an int in [1, num_train_timesteps], and the schedule must stay inside the table."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {k!r}")
    if k > spec.num_train_timesteps:
        raise ValueError(
            f"num_inference_steps {k} exceeds num_train_timesteps {spec.num_train_timesteps}"
        )
    if spec.timesteps is not None:
        if int(k) != len(spec.timesteps):
            raise ValueError(f"num_inference_steps {k} != the {len(spec.timesteps)} explicit timesteps "
                             f"{list(spec.timesteps)}")
        return
    if spec.kind in SOLVER_KINDS:
        from models.multistep import solver_timesteps

        solver_timesteps(spec.timestep_spacing, spec.num_train_timesteps, int(k), spec.steps_offset)
        return
    if spec.timestep_spacing == "leading":
        first = (k - 1) * (spec.num_train_timesteps // k) + spec.steps_offset
        if first >= spec.num_train_timesteps:
            raise ValueError(
                f"steps_offset {spec.steps_offset} with num_inference_steps {k} puts the first timestep at "
                f"{first}, past the last trained timestep {spec.num_train_timesteps - 1}"
            )


def check_custom_timesteps(kind: str, num_train_timesteps: int, values: Any) -> tuple[int, ...]:
    """Explicit timesteps as a tuple of ints: multistep solvers only, strictly descending, inside [0, N-1].

    Why only the solvers: their steps are built from any pair of noise levels (diffusers' set_timesteps(timesteps=)),
    while DDIM/DDPM step by the fixed stride N // K (their tables assume it)."""
    if kind not in SOLVER_KINDS:
        raise ValueError(f"explicit timesteps apply to the multistep samplers ({', '.join(SOLVER_KINDS)}), "
                         f"not {kind!r}")
    from models.timestep_list import descending_timesteps

    try:
        out = descending_timesteps(values)
    except ValueError as exc:
        raise ValueError(f"timesteps {exc}") from None
    if out[-1] < 0 or out[0] > num_train_timesteps - 1:
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps - 1}] (num_train_timesteps "
                         f"{num_train_timesteps}), got {out}")
    return tuple(out)


def with_timesteps(spec: SchedulerSpec, value: Any, num_inference_steps: int | None = None) -> SchedulerSpec:
    """``spec`` sampling at ``value`` (policy.timesteps): an explicit descending list, ``"logsnr"`` (K timesteps
    uniform in log-SNR, models.multistep.logsnr_timesteps; K = ``num_inference_steps``, else the spec's K, else
    num_train_timesteps), or None (the timestep_spacing rule). Raises ValueError on a bad list, a repeated
    logsnr timestep, or a kind that is not a multistep solver."""
    import dataclasses

    if value is None:
        return dataclasses.replace(spec, timesteps=None)
    if isinstance(value, str):
        if value != "logsnr":
            raise ValueError(f"timesteps must be a descending list of train timesteps or 'logsnr', got {value!r}")
        if spec.kind not in SOLVER_KINDS:
            check_custom_timesteps(spec.kind, spec.num_train_timesteps, [0])  # the one-line kind error
        from models.multistep import logsnr_timesteps

        k = num_inference_steps or spec.num_inference_steps or spec.num_train_timesteps
        value = logsnr_timesteps(alphas_cumprod(spec), int(k)).tolist()
    return dataclasses.replace(spec, timesteps=check_custom_timesteps(spec.kind, spec.num_train_timesteps, value),
                               num_inference_steps=None)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"scheduler {name} must be one of {', '.join(allowed)}; got {value!r}")


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"scheduler {name} must be an integer >= {low}, got {value!r}")


def _kind_from_class(key: str, value: Any) -> str:
    name = str(value).rsplit(".", 1)[-1]
    if name == "DDPMScheduler":
        return "ddpm"
    if name == "DDIMScheduler":
        return "ddim"
    if name == "DPMSolverMultistepScheduler":
        return "dpmsolver++"
    if name == "UniPCMultistepScheduler":
        return "unipc"
    raise ValueError(f"scheduler {key} {value!r} is not supported (DDPMScheduler, DDIMScheduler, "
                     f"DPMSolverMultistepScheduler or UniPCMultistepScheduler)")


def _kind_from_type_name(value: Any) -> str:
    if isinstance(value, str) and value.lower() in KINDS:
        return value.lower()
    raise ValueError(f"scheduler noise_scheduler_type must be DDPM or DDIM, got {value!r}")


def _parse_version(value: Any) -> tuple[int, ...]:
    match = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", str(value))
    if not match:
        raise ValueError(f"scheduler _diffusers_version {value!r} is not a version like 0.11.1")
    return tuple(int(g or 0) for g in match.groups())


# ====================================================================== tables


def betas(spec: SchedulerSpec) -> torch.Tensor:
    """Per-train-step betas (N,) float32, built exactly as diffusers builds them.

    linear / scaled_linear use torch.linspace in float32 (a float64 linspace cast down differs
    by up to 4e-9, enough to break bit parity); the squared-cosine schedule is evaluated in
    Python floats (float64), capped at 0.999, then cast.
    """
    n = spec.num_train_timesteps
    if spec.beta_schedule == "linear":
        return torch.linspace(spec.beta_start, spec.beta_end, n, dtype=torch.float32)
    if spec.beta_schedule == "scaled_linear":
        return torch.linspace(spec.beta_start**0.5, spec.beta_end**0.5, n, dtype=torch.float32) ** 2
    if spec.beta_schedule == "sigmoid":  # DDPMScheduler's GeoDiff schedule (0.11.1 and current alike)
        return torch.sigmoid(torch.linspace(-6, 6, n)) * (spec.beta_end - spec.beta_start) + spec.beta_start

    def alpha_bar(time: float) -> float:
        return math.cos((time + 0.008) / 1.008 * math.pi / 2) ** 2

    values = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
    return torch.tensor(values, dtype=torch.float64).to(torch.float32)


def alphas_cumprod(spec: SchedulerSpec) -> torch.Tensor:
    """(N,) float32 cumulative product of 1 - beta.

    ``alphas`` are formed in float32; the running product is accumulated in float64 and each
    value cast to float32. That is what torch's CPU cumprod does internally for float32, so the
    table is bit-identical to diffusers' (and to the fixtures) whatever device runs later; a
    true float32 accumulation (as on CUDA) would be off by ~1e-7.
    """
    alphas = 1.0 - betas(spec)
    return torch.cumprod(alphas.to(torch.float64), dim=0).to(torch.float32)


def timesteps(spec: SchedulerSpec, num_inference_steps: int | None = None) -> torch.Tensor:
    """The descending int64 timesteps diffusers' set_timesteps would produce for this spec (with explicit
    ``spec.timesteps``: those, as ``set_timesteps(timesteps=...)`` takes them)."""
    k = spec.resolved_steps(num_inference_steps)
    n = spec.num_train_timesteps
    if spec.timesteps is not None:  # validated: a solver kind, and k == len (resolved_steps)
        return torch.tensor(spec.timesteps, dtype=torch.int64)
    if spec.kind in SOLVER_KINDS:
        from models.multistep import solver_timesteps

        return torch.from_numpy(solver_timesteps(spec.timestep_spacing, n, k, spec.steps_offset))
    if spec.kind == "ddpm" and spec.ddpm_prev_rule == "t_minus_one":
        ts = np.arange(0, n, n // k)[::-1].copy().astype(np.int64)  # diffusers 0.11.1 DDPM
    elif spec.timestep_spacing == "linspace":
        ts = np.linspace(0, n - 1, k).round()[::-1].copy().astype(np.int64)
    elif spec.timestep_spacing == "leading":
        ts = (np.arange(0, k) * (n // k)).round()[::-1].copy().astype(np.int64) + spec.steps_offset
    else:  # trailing
        ts = np.round(np.arange(n, 0, -n / k)).astype(np.int64) - 1
    return torch.from_numpy(ts)


@dataclass
class StepTable:
    """Per-inference-step constants, each a float32 tensor of shape (K,) (``timesteps`` int64).

    Index i is the i-th denoising step (timesteps[i], descending). The step kernel only needs:

    * ``sqrt_a`` / ``sqrt_b``: sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t), to turn the model
      output into (x0, eps) for the prediction type.
    * DDPM: x_prev = ``coef_x0`` * x0 + ``coef_x`` * x + ``noise_std`` * z
    * DDIM: x_prev = ``coef_x0`` * x0 + ``coef_eps`` * eps + ``noise_std`` * z
    * ``noisy``: Python bools, where noise is added at all (DDPM t > 0, DDIM eta > 0); they are
      fixed by the spec, so branching on them is not data-dependent.
    """

    timesteps: torch.Tensor
    prev_timesteps: torch.Tensor
    sqrt_a: torch.Tensor
    sqrt_b: torch.Tensor
    coef_x0: torch.Tensor
    coef_x: torch.Tensor
    coef_eps: torch.Tensor
    noise_std: torch.Tensor
    noisy: tuple[bool, ...]

    TENSOR_FIELDS = ("timesteps", "prev_timesteps", "sqrt_a", "sqrt_b", "coef_x0", "coef_x", "coef_eps", "noise_std")

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])


def step_table(spec: SchedulerSpec, num_inference_steps: int | None = None) -> StepTable:
    """Evaluate diffusers' per-step scalar math once per step, with diffusers' float32 op order."""
    if spec.kind in SOLVER_KINDS:
        raise ValueError(f"scheduler kind {spec.kind!r} is a multistep solver: use models.multistep.multistep_table")
    k = spec.resolved_steps(num_inference_steps)
    ts = timesteps(spec, k)
    acp = alphas_cumprod(spec)
    bts = betas(spec)
    alphas = 1.0 - bts
    one = torch.tensor(1.0)
    legacy = spec.kind == "ddpm" and spec.ddpm_prev_rule == "t_minus_one"
    cols: dict[str, list[torch.Tensor]] = {name: [] for name in StepTable.TENSOR_FIELDS[1:]}
    noisy: list[bool] = []
    for i, t in enumerate(ts.tolist()):
        if spec.kind == "ddim":
            prev = t - spec.num_train_timesteps // k
        elif legacy:
            prev = t - 1
        else:
            prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
        a_t = acp[t]
        if spec.kind == "ddim":
            a_prev = acp[prev] if prev >= 0 else (one if spec.set_alpha_to_one else acp[0])
        else:
            a_prev = acp[prev] if prev >= 0 else one
        b_t = 1 - a_t
        b_prev = 1 - a_prev
        zero = torch.zeros(())
        if spec.kind == "ddim":
            variance = (b_prev / b_t) * (1 - a_t / a_prev)
            std = spec.eta * variance ** (0.5)
            coef_x0 = a_prev ** (0.5)
            coef_eps = (1 - a_prev - std**2) ** (0.5)
            coef_x = zero
            is_noisy = spec.eta > 0
            noise_std = std if is_noisy else zero
        else:
            if legacy:  # diffusers 0.11.1: trained betas[t] / alphas[t]
                beta_t, alpha_t = bts[t], alphas[t]
            else:
                alpha_t = a_t / a_prev
                beta_t = 1 - alpha_t
            coef_x0 = (a_prev ** (0.5) * beta_t) / b_t
            coef_x = alpha_t ** (0.5) * b_prev / b_t
            coef_eps = zero
            is_noisy = t > 0
            noise_std = _ddpm_noise_std(spec, a_t, a_prev, beta_t, legacy) if is_noisy else zero
        cols["prev_timesteps"].append(torch.tensor(prev, dtype=torch.int64))
        cols["sqrt_a"].append(a_t ** (0.5))
        cols["sqrt_b"].append(b_t ** (0.5))
        cols["coef_x0"].append(torch.as_tensor(coef_x0, dtype=torch.float32))
        cols["coef_x"].append(torch.as_tensor(coef_x, dtype=torch.float32))
        cols["coef_eps"].append(torch.as_tensor(coef_eps, dtype=torch.float32))
        cols["noise_std"].append(torch.as_tensor(noise_std, dtype=torch.float32))
        noisy.append(bool(is_noisy))
    stacked = {name: torch.stack(values) for name, values in cols.items()}
    return StepTable(timesteps=ts, noisy=tuple(noisy), **stacked)


def _ddpm_noise_std(spec: SchedulerSpec, a_t: torch.Tensor, a_prev: torch.Tensor, beta_t: torch.Tensor,
                    legacy: bool) -> torch.Tensor:
    """The factor diffusers multiplies the variance noise by, per variance_type and version."""
    variance = (1 - a_prev) / (1 - a_t) * beta_t
    if legacy:
        if spec.variance_type == "fixed_small":
            return torch.clamp(variance, min=1e-20) ** 0.5
        if spec.variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(torch.clamp(variance, min=1e-20)))
        return beta_t ** 0.5
    variance = torch.clamp(variance, min=1e-20)
    if spec.variance_type == "fixed_small":
        return variance ** 0.5
    if spec.variance_type == "fixed_small_log":
        return torch.exp(0.5 * torch.log(variance))
    return beta_t ** 0.5


# ====================================================================== the step kernel


def apply_step(
    kind: str,
    prediction_type: str,
    clip_range: float | None,
    sqrt_a: torch.Tensor,
    sqrt_b: torch.Tensor,
    coef_x0: torch.Tensor,
    coef_x: torch.Tensor,
    coef_eps: torch.Tensor,
    noise_std: torch.Tensor | None,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    variance_noise: torch.Tensor | None,
    target: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """One reverse step from per-step scalars: no Python branch depends on tensor values.

    The string/None arguments are fixed per spec, so a traced or exported graph sees one path.
    Op order follows diffusers so that eager float32 results are bit-identical.

    ``target``/``weight`` (guided inpainting, models/inpainting.py): before clipping, the clean-sample
    estimate is pulled towards ``target`` by ``weight`` in [0, 1] and eps is changed consistently
    (x = sqrt_a x0 + sqrt_b eps still holds), see docs/samplers.md.
    """
    if prediction_type == "epsilon":
        x0 = (sample - sqrt_b * model_output) / sqrt_a
        eps = model_output
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - sqrt_a * model_output) / sqrt_b if kind == "ddim" else None
    else:  # v_prediction
        x0 = sqrt_a * sample - sqrt_b * model_output
        eps = sqrt_a * model_output + sqrt_b * sample if kind == "ddim" else None
    if target is not None:
        pull = weight * (target - x0)
        x0 = x0 + pull
        if eps is not None:
            eps = eps - (sqrt_a / sqrt_b) * pull
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    if kind == "ddim":
        prev = coef_x0 * x0 + coef_eps * eps
    else:
        prev = coef_x0 * x0 + coef_x * sample
    if noise_std is not None:
        if variance_noise is None:
            raise ValueError("this step adds noise: pass variance_noise or let the caller draw it")
        prev = prev + noise_std * variance_noise
    return prev


class NoiseScheduler:
    """A spec bound to one K: its timesteps, its step table, and step() for Python loops.

    ``step`` is the reference the :class:`~models.sampler.Sampler` is tested against, and it is
    tested against diffusers itself.
    """

    def __init__(self, spec: SchedulerSpec, num_inference_steps: int | None = None):
        self.spec = spec
        self.num_inference_steps = spec.resolved_steps(num_inference_steps)
        self.table = step_table(spec, self.num_inference_steps)
        self.alphas_cumprod = alphas_cumprod(spec)
        self.betas = betas(spec)

    @property
    def timesteps(self) -> torch.Tensor:
        return self.table.timesteps

    def __len__(self) -> int:
        """Number of denoising steps (K; with ddpm_prev_rule 't_minus_one' it can exceed the K asked for)."""
        return len(self.table)

    @property
    def clip_range(self) -> float | None:
        return float(self.spec.clip_sample_range) if self.spec.clip_sample else None

    def step(self, model_output: torch.Tensor, t_index: int, sample: torch.Tensor,
             variance_noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_{t_prev} from the model output at the t_index-th step (not the timestep value).

        Noise is drawn with torch.randn_like when the step needs it and none is given, like
        diffusers' generator-less path; pass it in for reproducible runs.
        """
        n = len(self.table)
        if isinstance(t_index, bool) or not isinstance(t_index, (int, np.integer)) or not -n <= t_index < n:
            raise ValueError(f"t_index must be an integer step index in [0, {n}), got {t_index!r}")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")
        i = int(t_index)
        tab = self.table
        dev, dt = sample.device, sample.dtype
        noise_std = None
        if tab.noisy[i]:
            noise_std = tab.noise_std[i].to(dev, dt)
            if variance_noise is None:
                variance_noise = torch.randn_like(sample)
            elif variance_noise.shape != sample.shape:
                raise ValueError(f"variance_noise shape {tuple(variance_noise.shape)} != sample shape {tuple(sample.shape)}")
        return apply_step(
            self.spec.kind, self.spec.prediction_type, self.clip_range,
            tab.sqrt_a[i].to(dev, dt), tab.sqrt_b[i].to(dev, dt), tab.coef_x0[i].to(dev, dt),
            tab.coef_x[i].to(dev, dt), tab.coef_eps[i].to(dev, dt), noise_std,
            model_output, sample, variance_noise if noise_std is not None else None,
        )

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0), as diffusers' add_noise (for training-side checks)."""
        acp = self.alphas_cumprod.to(original.device, original.dtype)
        timestep = timestep.to(original.device)
        shape = (-1,) + (1,) * (original.dim() - 1)
        sqrt_a = (acp[timestep] ** 0.5).flatten().reshape(shape)
        sqrt_b = ((1 - acp[timestep]) ** 0.5).flatten().reshape(shape)
        return sqrt_a * original + sqrt_b * noise
