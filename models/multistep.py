"""Multistep ODE solvers (DPM-Solver++ 2M, UniPC-2 bh2) as per-step coefficient tables.

Why tables: both solvers are, once their step sizes are fixed, *linear* in the current sample and in
the last few data predictions x0 = D(x_t, t). Every coefficient depends only on the noise levels of
the schedule, so it is computed once here (float64, from diffusers' float32 sigmas) and a step is a
handful of multiply-adds that read it. Which history terms a step uses (its order, whether UniPC's
corrector runs) depends on the step index only, so it is a static Python tuple, never a branch on a
tensor value: the whole K-loop traces to one fixed graph.

Semantics follow diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero") and
UniPCMultistepScheduler(solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
disable_corrector=[]), including their order warm-up and their timestep spacings; the tests compare
every step against diffusers. One addition: ``clip_sample`` clamps each data prediction to
[-range, range], as the checkpoint's own DDPM/DDIM sampler does (diffusers has no such option for
these solvers; with clip_sample false the two agree).

Notation (docs/samplers.md): sigma = sqrt((1 - abar)/abar), alpha_t = 1/sqrt(1 + sigma^2),
sigma_t = sigma * alpha_t, lambda = log(alpha_t / sigma_t), h = lambda_next - lambda_now.

Only torch and numpy (``models/`` rule).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SOLVER_KINDS = ("dpmsolver++", "unipc")


def solver_timesteps(spacing: str, num_train_timesteps: int, k: int, steps_offset: int = 0) -> np.ndarray:
    """Descending int64 timesteps as DPMSolverMultistep/UniPCMultistep.set_timesteps build them.

    (Not DDIM's rule: "leading" here divides by K + 1, and "linspace" spans K + 1 points.)
    Raises ValueError when the spacing gives repeated timesteps (a zero-length step), e.g. K = N with
    "linspace" or "leading".
    """
    ts = _spaced(spacing, num_train_timesteps, k, steps_offset)
    if not _valid(ts, num_train_timesteps, k):
        most = max((j for j in range(1, num_train_timesteps + 1)
                    if _valid(_spaced(spacing, num_train_timesteps, j, steps_offset), num_train_timesteps, j)),
                   default=0)
        raise ValueError(f"num_inference_steps {k} with timestep_spacing '{spacing}' and {num_train_timesteps} train "
                         f"steps repeats timesteps (a zero-length step); this schedule allows at most {most} steps")
    return ts


LOGSNR_SIGMA_MIN = 0.05


def logsnr_bounds(alphas_cumprod: torch.Tensor) -> tuple[int, int]:
    """(t_hi, t_lo) of the ``logsnr`` rule for a schedule of N = len(alphas_cumprod) train steps.

    t_hi = 9 * (N // 10), the largest timestep of DDIM's "leading" spacing at K = 10 (90 for N = 100; N - 1 when
    N < 10): the level Diffusion Policy's own K = 10 sampling starts from. The levels above it (sigma 7 -> 2000 for
    squaredcos_cap_v2) change the clean-sample estimate little, and a step from t = 99 spends a solver step there.
    t_lo = the smallest t with sigma(t) >= 0.05 (2 for Diffusion Policy's schedule): the last step, to sigma = 0,
    is first order in every solver, so it should start from a small noise level; at t = 0 or 1 it is too small to
    be worth the step it costs (docs/samplers.md has the offline errors)."""
    n = int(alphas_cumprod.shape[0])
    t_hi = 9 * (n // 10) if n >= 10 else n - 1
    sig = train_sigmas(alphas_cumprod).double().numpy()
    above = np.nonzero(sig >= LOGSNR_SIGMA_MIN)[0]
    t_lo = int(above[0]) if len(above) else n - 1
    return t_hi, min(t_lo, t_hi)


def logsnr_timesteps(alphas_cumprod: torch.Tensor, k: int) -> np.ndarray:
    """``policy.timesteps: logsnr``: K train timesteps nearest to uniform in lambda = log(alpha_t / sigma_t)
    = -log sigma(t) from t_hi down to t_lo (:func:`logsnr_bounds`), both ends included.

    Why uniform in lambda: the solvers' error per step grows with h = lambda_next - lambda_now, and the spacing
    rules (uniform in t) put h ~ 6 into the first step and leave a large jump from t = 20-25 to the clean sample
    at K = 4. Raises ValueError when rounding to integer timesteps repeats one (K too large for the range)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"timesteps logsnr needs K >= 1, got {k!r}")
    t_hi, t_lo = logsnr_bounds(alphas_cumprod)
    lam = -np.log(train_sigmas(alphas_cumprod).double().numpy())
    targets = np.linspace(lam[t_hi], lam[t_lo], int(k))
    ts = np.array([int(np.argmin(np.abs(lam - x))) for x in targets], dtype=np.int64)
    if np.any(np.diff(ts) >= 0):
        raise ValueError(f"timesteps logsnr with K = {k} repeats timesteps between t = {t_hi} and {t_lo} "
                         f"({ts.tolist()}); use fewer steps or an explicit list")
    return ts


def _spaced(spacing: str, n: int, k: int, steps_offset: int) -> np.ndarray:
    if spacing == "linspace":
        return np.linspace(0, n - 1, k + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = n // (k + 1)
        return (np.arange(0, k + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.arange(n, 0, -n / k).round().copy().astype(np.int64) - 1
    raise ValueError(f"timestep_spacing must be linspace, leading or trailing, got {spacing!r}")


def _valid(ts: np.ndarray, n: int, k: int) -> bool:
    return len(ts) == k and not np.any(np.diff(ts) >= 0) and ts.min() >= 0 and ts.max() < n


@dataclass
class MultistepTable:
    """Per-step constants of a multistep solver; tensors are float32 unless noted.

    Step i evaluates the model at x_i (timestep ``timesteps[i]``) and turns its output into the data
    prediction m_i with (``sqrt_a[i]``, ``sqrt_b[i]``) = (alpha_t, sigma_t). Then:

    * corrector (UniPC, ``corr_order[i]`` > 0): x_i <- corr[i,0] x_{i-1} + corr[i,1] m_{i-1}
      + corr[i,2] m_{i-2} + corr[i,3] m_i, where x_{i-1} is the previous *corrected* sample;
    * predictor: x_{i+1} = pred[i,0] x_i + pred[i,1] m_i + pred[i,2] m_{i-1}.

    ``level_a``/``level_b`` (K + 1,) are (alpha_t, sigma_t) of the level each step starts from, plus
    the final level (1, 0): what the inpainting and warm-start code noise a known trajectory to.
    """

    timesteps: torch.Tensor          # (K,) int64
    sqrt_a: torch.Tensor             # (K,)
    sqrt_b: torch.Tensor             # (K,)
    corr: torch.Tensor               # (K, 4)
    pred: torch.Tensor               # (K, 3)
    level_a: torch.Tensor            # (K + 1,)
    level_b: torch.Tensor            # (K + 1,)
    corr_order: tuple[int, ...]      # 0: no corrector on this step
    pred_order: tuple[int, ...]

    TENSOR_FIELDS = ("timesteps", "sqrt_a", "sqrt_b", "corr", "pred", "level_a", "level_b")

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])


def train_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma(t) = sqrt((1 - abar)/abar) in float32, exactly as the diffusers solvers compute it."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def multistep_table(kind: str, alphas_cumprod: torch.Tensor, timesteps: np.ndarray) -> MultistepTable:
    """Coefficients for ``kind`` over the given descending timesteps (a full schedule or a suffix of one).

    A suffix is solved as its own schedule (order warm-up from its first step), which is what
    diffusers' DPMSolver does with ``set_timesteps(timesteps=suffix)``: the warm start uses this.
    """
    if kind not in SOLVER_KINDS:
        raise ValueError(f"multistep solver must be one of {', '.join(SOLVER_KINDS)}, got {kind!r}")
    ts = np.asarray(timesteps, dtype=np.int64)
    k = len(ts)
    sig_train = train_sigmas(alphas_cumprod).numpy()
    # diffusers: np.interp at integer timesteps (exact values), then float32, then a final sigma of 0.
    sig = np.concatenate([sig_train[ts].astype(np.float64), [0.0]]).astype(np.float32)
    sig_t = torch.from_numpy(sig)
    a32 = 1 / ((sig_t ** 2 + 1) ** 0.5)          # alpha_t, float32 as diffusers
    s32 = sig_t * a32                              # sigma_t
    alpha = a32.double().numpy()
    sigma = s32.double().numpy()
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)        # +inf at the final level
    corr = np.zeros((k, 4))
    pred = np.zeros((k, 3))
    corr_order: list[int] = []
    pred_order: list[int] = []
    lower = 0
    prev_order = 0
    for i in range(k):
        if kind == "dpmsolver++":
            order = 1 if (lower < 1 or i == k - 1) else 2
            pred[i] = _dpmpp_pred(order, i, alpha, sigma, lam)
            corr_order.append(0)
        else:
            c = prev_order if i > 0 else 0
            if c:
                corr[i] = _unipc_corr(c, i, alpha, sigma, lam)
            corr_order.append(c)
            order = min(2, k - i, lower + 1)
            pred[i] = _unipc_pred(order, i, alpha, sigma, lam)
            prev_order = order
        pred_order.append(order)
        lower = min(lower + 1, 2)
    f32 = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return MultistepTable(
        timesteps=torch.from_numpy(ts.copy()), sqrt_a=a32[:k].clone(), sqrt_b=s32[:k].clone(),
        corr=f32(corr), pred=f32(pred), level_a=a32.clone(), level_b=s32.clone(),
        corr_order=tuple(corr_order), pred_order=tuple(pred_order),
    )


def _ratio(num: float, den: float) -> float:
    return 0.0 if num == 0.0 else num / den


def _dpmpp_pred(order: int, i: int, alpha, sigma, lam) -> np.ndarray:
    """DPM-Solver++ (data prediction) 1st order (= DDIM) or 2M midpoint, as coefficients of (x, m_i, m_{i-1}).

    x' = (s_t/s_0) x - a_t (e^{-h} - 1) D0 - 0.5 a_t (e^{-h} - 1) D1, D0 = m_i, D1 = (m_i - m_{i-1}) / r0.
    """
    a_t, s_t, s_0 = alpha[i + 1], sigma[i + 1], sigma[i]
    h = lam[i + 1] - lam[i]
    em = np.exp(-h) - 1.0                      # -1 at the final level (h = inf)
    cx = _ratio(s_t, s_0)
    if order == 1:
        return np.array([cx, -a_t * em, 0.0])
    r0 = (lam[i] - lam[i - 1]) / h
    return np.array([cx, -a_t * em * (1.0 + 0.5 / r0), 0.5 * a_t * em / r0])


def _bh2_rhos(order: int, hh: float, rks: list[float]) -> tuple[np.ndarray, float, float]:
    """UniPC's B(h) = e^{hh} - 1 (bh2) and the rho weights solving R rho = b (diffusers' construction)."""
    h_phi_1 = np.expm1(hh)
    b_h = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    fact = 1
    rows, b = [], []
    rk_all = np.array(rks + [1.0])
    for j in range(1, order + 1):
        rows.append(rk_all ** (j - 1))
        b.append(h_phi_k * fact / b_h)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return np.array(rows), np.array(b), h_phi_1, b_h


def _unipc_pred(order: int, i: int, alpha, sigma, lam) -> np.ndarray:
    """UniP-bh2 from level i to i+1: x' = (s_t/s_0) x - a_t h_phi_1 m_i - a_t B_h rho_p D1 (order 2: rho_p = 1/2)."""
    a_t, s_t, s_0 = alpha[i + 1], sigma[i + 1], sigma[i]
    h = lam[i + 1] - lam[i]
    hh = -h
    h_phi_1 = np.expm1(hh)
    b_h = np.expm1(hh)
    out = np.array([_ratio(s_t, s_0), -a_t * h_phi_1, 0.0])
    if order == 2:
        rk = (lam[i - 1] - lam[i]) / h          # D1 = (m_{i-1} - m_i) / rk
        w = a_t * b_h * 0.5 / rk
        out[1] += w
        out[2] -= w
    return out


def _unipc_corr(order: int, i: int, alpha, sigma, lam) -> np.ndarray:
    """UniC-bh2 correcting x_i with the fresh m_i, from the corrected x_{i-1}; coefficients of
    (x_{i-1}, m_{i-1}, m_{i-2}, m_i)."""
    a_t, s_t, s_0 = alpha[i], sigma[i], sigma[i - 1]
    h = lam[i] - lam[i - 1]
    hh = -h
    rks = [] if order == 1 else [(lam[i - 2] - lam[i - 1]) / h]
    rows, b, h_phi_1, b_h = _bh2_rhos(order, hh, rks)
    rhos = np.array([0.5]) if order == 1 else np.linalg.solve(rows, b)
    out = np.array([_ratio(s_t, s_0), -a_t * h_phi_1, 0.0, 0.0])
    # - a_t B_h (sum_k rho_k D1_k + rho_last (m_i - m_{i-1})), D1 = (m_{i-2} - m_{i-1}) / rk
    w_last = a_t * b_h * rhos[-1]
    out[3] -= w_last
    out[1] += w_last
    if order == 2:
        w = a_t * b_h * rhos[0] / rks[0]
        out[2] -= w
        out[1] += w
    return out


def data_prediction(prediction_type: str, clip_range: float | None, sqrt_a: torch.Tensor, sqrt_b: torch.Tensor,
                    model_output: torch.Tensor, sample: torch.Tensor, target: torch.Tensor | None = None,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """x0 from the model output at level (alpha_t, sigma_t), as diffusers' convert_model_output, then clip.

    ``target``/``weight``: guided inpainting pulls x0 towards the target before clipping (docs/samplers.md).
    """
    if prediction_type == "epsilon":
        x0 = (sample - sqrt_b * model_output) / sqrt_a
    elif prediction_type == "sample":
        x0 = model_output
    else:  # v_prediction
        x0 = sqrt_a * sample - sqrt_b * model_output
    if target is not None:
        x0 = x0 + weight * (target - x0)
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    return x0


def corrector(order: int, c: torch.Tensor, last: torch.Tensor, m_prev: list[torch.Tensor],
              m_now: torch.Tensor) -> torch.Tensor:
    """UniC: the corrected x_i (``order`` is static; ``m_prev`` holds m_{i-1}, m_{i-2}, newest first)."""
    out = c[0] * last + c[1] * m_prev[0] + c[3] * m_now
    if order == 2:
        out = out + c[2] * m_prev[1]
    return out


def predictor(order: int, p: torch.Tensor, x: torch.Tensor, m_now: torch.Tensor,
              m_prev: list[torch.Tensor]) -> torch.Tensor:
    """x_{i+1} from the (corrected) x_i and the data predictions (``order`` is static)."""
    out = p[0] * x + p[1] * m_now
    if order == 2:
        out = out + p[2] * m_prev[0]
    return out


class MultistepScheduler:
    """A step-by-step reference over a MultistepTable (tests, debugging); the Sampler uses the same kernels.

    ``step(model_output, i, sample)`` keeps the history itself, like diffusers' stateful step(); call
    ``reset()`` (or make a new one) before another trajectory.
    """

    def __init__(self, kind: str, alphas_cumprod: torch.Tensor, timesteps: np.ndarray, prediction_type: str,
                 clip_range: float | None):
        self.table = multistep_table(kind, alphas_cumprod, timesteps)
        self.prediction_type = prediction_type
        self.clip_range = clip_range
        self.reset()

    def reset(self) -> None:
        self._m: list[torch.Tensor] = []
        self._last: torch.Tensor | None = None

    def step(self, model_output: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        tab = self.table
        m = data_prediction(self.prediction_type, self.clip_range, tab.sqrt_a[i], tab.sqrt_b[i], model_output, sample)
        if tab.corr_order[i]:
            sample = corrector(tab.corr_order[i], tab.corr[i], self._last, self._m, m)
        self._last = sample
        self._m = [m] + self._m[:1]
        return predictor(tab.pred_order[i], tab.pred[i], sample, m, self._m[1:])
