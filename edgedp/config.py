"""The run config: one YAML file, validated into typed objects before any port opens or torque is enabled.

Every mistake becomes one line `<field.path>: <what is wrong> (<what is allowed>)`, so a user at a bench
can fix the file without reading a traceback. Relative paths are resolved against the config file's folder.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgedp.errors import ConfigError
from models.safe_yaml import YamlInputError, read_yaml_file

# Servo models the bus driver knows (their control tables live in firmware_bridge).
SERVO_MODELS = (
    "xl330-m077",
    "xl330-m288",
    "xl430-w250",
    "xm430-w350",
    "xm540-w270",
    "xc330-m181",
    "xc330-m288",
    "xc330-t181",
    "xc330-t288",
    "xh540-w150",
    "xh540-w270",
)

DYNAMIXEL_BAUDS = (9600, 57600, 115200, 1000000, 2000000, 3000000, 4000000, 4500000)

# Color stream modes a RealSense D400 camera can do (width, height) and its frame rates.
REALSENSE_RESOLUTIONS = (
    (320, 180), (320, 240), (424, 240), (640, 360), (640, 480), (848, 480),
    (960, 540), (1280, 720), (1920, 1080),
)
REALSENSE_FPS = (6, 15, 30, 60, 90)

BACKENDS = ("eager", "inductor", "tensorrt", "onnxruntime", "onnxruntime-loop", "cpu-int8")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
SAMPLERS = ("ddim", "ddpm", "dpmsolver++", "unipc")
JOINS = ("crossfade", "ensemble", "inpaint")  # safety.join
INPAINT_OVERLAPS = ("soft", "none")  # safety.inpaint_overlap
INPAINT_FORMS = ("replace", "guided")  # safety.inpaint_form

# A checkpoint value of this form builds a randomly initialised policy from a models/ preset.
PRESET_PREFIX = "preset:"


class _Strict(BaseModel):
    # allow_inf_nan=False: inf/nan (also given as the strings 'inf', 'NaN') fail every float field by name,
    # so `.inf` cannot pass a `gt=0` check and crash later.
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False, allow_inf_nan=False)


class BusConfig(_Strict):
    """The servo bus. `port: emulator` runs the built-in Protocol 2.0 emulator on a pseudo-terminal."""

    port: str = Field(description="serial device such as /dev/ttyUSB0, or 'emulator'")
    baud: int = 1000000
    low_latency: bool = True
    fast_sync_read: Literal["auto", "on", "off"] = "auto"

    @field_validator("baud")
    @classmethod
    def _known_baud(cls, v: int) -> int:
        if v not in DYNAMIXEL_BAUDS:
            raise ValueError(f"{v} is not a Dynamixel baud rate (allowed: {', '.join(map(str, DYNAMIXEL_BAUDS))})")
        return v


class JointConfig(_Strict):
    """One joint: limits and dynamics in radians; direction and zero offset map servo ticks to the model."""

    name: str
    id: int = Field(ge=0, le=252)
    model: str
    min: float = Field(description="lower position limit, rad")
    max: float = Field(description="upper position limit, rad")
    max_velocity: float = Field(gt=0, description="rad/s")
    max_acceleration: float = Field(gt=0, description="rad/s^2")
    direction: Literal[1, -1] = 1
    zero_offset: float = Field(0.0, description="servo angle (rad) at which the joint reads zero")
    operating_mode: Literal["position", "extended_position"] = "position"

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        v = v.lower()
        if v not in SERVO_MODELS:
            raise ValueError(f"unknown servo model '{v}' (allowed: {', '.join(SERVO_MODELS)})")
        return v

    @model_validator(mode="after")
    def _limits_ordered(self) -> "JointConfig":
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be less than max ({self.max})")
        return self


class RobotConfig(_Strict):
    name: str = "robot"
    bus: BusConfig
    joints: list[JointConfig] = Field(min_length=1)
    calibration_file: Optional[Path] = None
    dh: Optional[list[list[float]]] = Field(
        None, description="DH rows [a, alpha, d, theta_offset] per joint, for forward kinematics"
    )
    time_offset_file: Optional[Path] = Field(
        None, description="YAML from `edgedp calibrate time-offset`: camera and command delays used to align observations"
    )

    @model_validator(mode="after")
    def _unique(self) -> "RobotConfig":
        seen: dict[int, int] = {}
        for i, joint in enumerate(self.joints):
            if joint.id in seen:
                raise _FieldError(
                    ("joints", i, "id"),
                    f"duplicate joint id {joint.id} (also used by joints[{seen[joint.id]}]; each joint needs its own id)",
                )
            seen[joint.id] = i
        names = [j.name for j in self.joints]
        for i, n in enumerate(names):
            if names.index(n) != i:
                raise _FieldError(("joints", i, "name"), f"duplicate joint name '{n}' (names must be unique)")
        return self


class CameraConfig(_Strict):
    """One camera. `kind: virtual` renders the simulated scene through a virtual RealSense device."""

    name: str
    kind: Literal["realsense", "virtual", "file"]
    serial: Optional[str] = None
    file: Optional[Path] = None
    width: int = Field(640, gt=0)
    height: int = Field(480, gt=0)
    fps: int = Field(30, gt=0)
    depth: bool = False
    exposure: Optional[float] = Field(None, gt=0, description="µs; None keeps auto exposure")
    white_balance: Optional[float] = Field(None, gt=0, description="K; None keeps auto white balance")
    policy_key: Optional[str] = Field(None, description="the checkpoint's image feature this camera feeds")

    @model_validator(mode="after")
    def _kind_can_do_it(self) -> "CameraConfig":
        if self.kind == "realsense":
            if (self.width, self.height) not in REALSENSE_RESOLUTIONS:
                allowed = ", ".join(f"{w}x{h}" for w, h in REALSENSE_RESOLUTIONS)
                raise _FieldError(("width",), f"a RealSense cannot stream {self.width}x{self.height} (allowed: {allowed})")
            if self.fps not in REALSENSE_FPS:
                raise _FieldError(("fps",), f"a RealSense cannot stream at {self.fps} fps (allowed: {', '.join(map(str, REALSENSE_FPS))})")
        if self.kind == "virtual":
            if self.width > 1920 or self.height > 1080:
                raise _FieldError(("width",), f"virtual camera resolution {self.width}x{self.height} too large (at most 1920x1080)")
            if self.fps > 240:
                raise _FieldError(("fps",), f"virtual camera fps {self.fps} too high (1 to 240)")
        if self.kind == "file" and self.file is None:
            raise _FieldError(("file",), "a camera of kind 'file' needs a recorded .bag or .db3 file")
        return self


class RemoteConfig(_Strict):
    """policy.remote: chunks come from a policy server (`edgedp serve`, docs/serve.md) instead of this machine."""

    url: str = Field(description="http://HOST:PORT of the server")
    timeout_ms: float = Field(1000.0, gt=0, le=60000, description="deadline per chunk; later = no chunk (arm holds)")
    token: Optional[str] = Field(None, description="shared token (prefer token_file or the environment variable)")
    token_file: Optional[Path] = Field(None, description="file whose first line is the shared token")
    token_env: str = Field("EDGEDP_SERVE_TOKEN", description="environment variable read when token/token_file are "
                           "unset; the default is the one `edgedp serve` reads (EDGEDP_REMOTE_TOKEN is also read)")
    fallback: Literal["none", "local"] = Field(
        "none", description="when the server stops answering mid-run: none = hold and retry; local = run the "
                            "checkpoint on this machine for the rest of the run")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ValueError(f"expected http://HOST:PORT (or https://), got '{v}'")
        return v.rstrip("/")


class PolicyConfig(_Strict):
    checkpoint: str = Field(description="native/LeRobot/.ckpt path, or 'preset:NAME' for a random policy")
    backend: Literal[BACKENDS] = "eager"  # type: ignore[valid-type]
    precision: Literal[PRECISIONS] = "fp32"  # type: ignore[valid-type]
    device: str = "cpu"
    steps: Optional[int] = Field(None, ge=1, le=1000, description="denoising steps K (DDIM); None = checkpoint's")
    n_action_steps: Optional[int] = Field(None, ge=1, description="executed steps T_a; None = checkpoint's")
    action_period: Optional[float] = Field(None, gt=0, description="seconds between actions; None = checkpoint's or 0.1")
    seed: int = 0
    state_key: Optional[str] = Field(None, description="checkpoint feature fed with joint positions")
    cache_dir: Optional[Path] = None
    extra_latency_ms: float = Field(0.0, ge=0, description="inject latency into every inference (evaluation)")
    action_lead_periods: float = Field(
        0.0, ge=0, le=4, description="the chunk's 'now' action is the target for this many action periods after the "
        "observation: 1 for data recorded as 'joint target one period after the observation' (edgedp record), "
        "0 for targets commanded at the frame's time (LeRobot teleoperation data, the original runtime)")
    sync: bool = Field(False, description="synchronous planning: the arm holds while the policy thinks (a baseline)")
    sampler: Optional[Literal[SAMPLERS]] = Field(  # type: ignore[valid-type]
        None, description="denoising method over the same weights (docs/samplers.md); None = checkpoint's")
    warm_start: bool = Field(False, description="start each chunk from the previous one, noised part-way (Falcon)")
    warm_start_level: float = Field(0.5, gt=0, le=1, description="warm start: fraction of the K steps that run")
    timesteps: Optional[Union[list[int], Literal["logsnr"]]] = Field(
        None, description="dpmsolver++/unipc only: explicit descending train timesteps (K = their number), or "
        "'logsnr' (K uniform in log-SNR from t = 9*(N//10) to the smallest t with sigma >= 0.05; docs/samplers.md); "
        "None = the checkpoint's timestep spacing")
    remote: Optional[RemoteConfig] = Field(None, description="run the policy on a server (edgedp serve)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not (v == "cpu" or v == "cuda" or v.startswith("cuda:")):
            raise ValueError(f"unknown device '{v}' (allowed: cpu, cuda, cuda:N)")
        return v

    @field_validator("timesteps", mode="before")
    @classmethod
    def _timesteps(cls, v: Any) -> Any:
        """One line for every malformed list (a Union's per-branch errors would be several); the range
        [0, N-1] needs the checkpoint and is checked at validate (edgedp.app)."""
        from models.timestep_list import descending_timesteps

        if v is None or v == "logsnr":
            return v
        v = descending_timesteps(v, _short)
        if v[-1] < 0:
            raise ValueError(f"must be >= 0, got {_short(v)}")
        return v

    @model_validator(mode="after")
    def _timesteps_fit(self) -> "PolicyConfig":
        if self.timesteps is None:
            return self
        if self.sampler in ("ddim", "ddpm"):
            raise _FieldError(("timesteps",), f"applies to the multistep samplers (dpmsolver++, unipc), not "
                                              f"policy.sampler {self.sampler}")
        if isinstance(self.timesteps, list) and self.steps is not None and self.steps != len(self.timesteps):
            raise _FieldError(("timesteps",), f"{len(self.timesteps)} timesteps but policy.steps is {self.steps} "
                                              f"(they must agree, or leave policy.steps out)")
        return self


class RatesConfig(_Strict):
    servo_hz: float = Field(500.0, ge=50, le=1000)
    max_observation_age: float = Field(0.25, gt=0, description="seconds; older observations are not planned on")
    servo_in_process: bool = Field(True, description="run the servo loop in its own process (default), where the "
                                   "planner's GIL cannot delay its ticks; false: a thread (more jitter)")


class SafetyConfig(_Strict):
    on_stop: Literal["hold", "torque_off"] = "hold"
    watchdog_failed_ticks: int = Field(10, ge=1)
    start_ramp_time: float = Field(2.0, gt=0, description="seconds to ramp from the current pose to the first action")
    interpolation: Literal["linear", "cubic"] = "linear"
    join: Literal[JOINS] = "crossfade"  # type: ignore[valid-type]
    inpaint_form: Literal[INPAINT_FORMS] = Field(  # type: ignore[valid-type]
        "guided", description="join: inpaint: RTC-style guided soft mask, or RePaint replacement (docs/samplers.md)")
    inpaint_overlap: Literal[INPAINT_OVERLAPS] = Field(  # type: ignore[valid-type]
        "soft", description="join: inpaint, guided form: 'soft' also guides the new chunk, with RTC's decaying "
        "weights, towards every later step the previous chunk still predicts; 'none' guides only the decided steps "
        "(a task that must react to contact, such as Push-T, follows stale predictions less). Ignored with another "
        "join, like inpaint_form; the replace form has no soft tail (docs/samplers.md)")
    crossfade_steps: int = Field(3, ge=0)
    ensemble_decay: float = Field(0.01, ge=0, description="ACT temporal-ensembling weight exp(-decay*i)")


class TelemetryConfig(_Strict):
    path: Optional[Path] = None
    live: bool = True
    plot: bool = True


class SceneConfig(_Strict):
    """The simulated scene that couples the emulated arm and the virtual camera (sim runs only)."""

    task: Literal["reach", "reach_multimodal", "pusht", "none"] = "reach"
    link_lengths: list[float] = Field(default_factory=lambda: [0.12, 0.10])
    workspace: float = Field(0.3, gt=0, description="metres shown across the image")
    seed: int = 0
    pulley_radius: float = Field(0.1, gt=0, description="pusht: gantry pulley radius, metres of belt per radian")


class RunConfig(_Strict):
    robot: RobotConfig
    cameras: list[CameraConfig] = Field(default_factory=list)
    policy: PolicyConfig
    rates: RatesConfig = Field(default_factory=RatesConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    scene: Optional[SceneConfig] = None
    duration: Optional[float] = Field(None, gt=0, description="seconds; None runs until Ctrl-C")

    @model_validator(mode="after")
    def _unique_cameras(self) -> "RunConfig":
        names = [c.name for c in self.cameras]
        for i, n in enumerate(names):
            if names.index(n) != i:
                raise _FieldError(("cameras", i, "name"), f"duplicate camera name '{n}' (names must be unique)")
        uses_sim = self.robot.bus.port == "emulator" or any(c.kind == "virtual" for c in self.cameras)
        if uses_sim and self.scene is None:
            self.scene = SceneConfig()
        return self

    # Where the config was read from; relative paths were resolved against its folder.
    source: Optional[Path] = Field(None, exclude=True)


class _FieldError(ValueError):
    """A validator's error that belongs to a sub-field, so the message names the exact path."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc
        self.message = message


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _short(value: Any, limit: int = 60) -> str:
    """repr() cut to one short line; huge ints (whose repr raises) and long strings stay readable."""
    try:
        text = repr(value)
    except ValueError:
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(err: dict[str, Any]) -> str:
    kind = err["type"]
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key (remove it or check its spelling)"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"got {_short(err.get('input'))} (allowed: {ctx.get('expected', '')})"
    if kind == "value_error":
        cause = ctx.get("error")
        return str(cause) if cause is not None else msg.removeprefix("Value error, ")
    if kind == "finite_number":
        return f"{_short(err.get('input'))} is not a finite number (a finite number)"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{msg.lower()} (got {_short(err.get('input'))})"
    return f"{msg} (got {_short(err.get('input'))})"


def _problems(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            loc = loc + tuple(cause.loc)
            text = cause.message
        else:
            text = _describe(err)
        lines.append(f"{_format_loc(loc)}: {text}")
    return lines


def _resolve_paths(cfg: RunConfig, base: Path) -> list[str]:
    """Resolve relative paths against the config folder and report files that do not exist."""
    problems: list[str] = []

    def fix(p: Optional[Path]) -> Optional[Path]:
        if p is None:
            return None
        p = Path(p).expanduser()
        return p if p.is_absolute() else (base / p)

    ck = cfg.policy.checkpoint
    if not ck.startswith(PRESET_PREFIX):
        path = fix(Path(ck))
        cfg.policy.checkpoint = str(path)
        if not path.exists():
            problems.append(f"policy.checkpoint: file not found: {path} (a checkpoint path, or preset:NAME)")
    else:
        name = ck[len(PRESET_PREFIX):]
        available = _preset_names()
        if available and name not in available:
            problems.append(f"policy.checkpoint: unknown preset '{name}' (allowed: {', '.join(available)})")
    for i, cam in enumerate(cfg.cameras):
        if cam.file is not None:
            cam.file = fix(cam.file)
            if not cam.file.exists():
                problems.append(f"cameras[{i}].file: file not found: {cam.file}")
    if cfg.robot.calibration_file is not None:
        cfg.robot.calibration_file = fix(cfg.robot.calibration_file)
    if cfg.robot.time_offset_file is not None:
        cfg.robot.time_offset_file = fix(cfg.robot.time_offset_file)
        if not cfg.robot.time_offset_file.exists():
            problems.append(f"robot.time_offset_file: file not found: {cfg.robot.time_offset_file}")
    if cfg.telemetry.path is not None:
        cfg.telemetry.path = fix(cfg.telemetry.path)
    if cfg.policy.cache_dir is not None:
        cfg.policy.cache_dir = fix(cfg.policy.cache_dir)
    remote = cfg.policy.remote
    if remote is not None and remote.token_file is not None:
        remote.token_file = fix(remote.token_file)
        if not remote.token_file.is_file():
            problems.append(f"policy.remote.token_file: file not found: {remote.token_file}")
    return problems


def _preset_names() -> list[str]:
    from models.presets import list_presets

    return list(list_presets())


def parse_config(data: Any, base: Path | None = None, source: Path | None = None) -> RunConfig:
    """Validate a config mapping; raise ConfigError listing every problem, one line each."""
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping of sections, got {type(data).__name__}"])
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None
    problems = _resolve_paths(cfg, base or Path.cwd())
    for i, joint in enumerate(cfg.robot.joints):
        if not all(math.isfinite(v) for v in (joint.min, joint.max, joint.zero_offset)):
            problems.append(f"robot.joints[{i}]: limits and zero_offset must be finite numbers")
    if problems:
        raise ConfigError(problems)
    cfg.source = source
    return cfg


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config.

    The reader (models.safe_yaml) takes on/off/yes/no as the words they are (pydantic still makes
    them booleans where a field is a bool) and refuses duplicate keys, aliases, non-finite numbers,
    oversized integers, deep nesting, non-UTF-8, empty or oversized files, each as one line.
    """
    path = Path(path)
    try:
        data = read_yaml_file(path)
    except YamlInputError as exc:
        raise ConfigError([f"{where}: {what}" if where else f"config: {what}" for where, what in exc.problems]) from None
    return parse_config(data, base=path.resolve().parent, source=path.resolve())


def check_against_policy(cfg: RunConfig, horizon: int, n_obs_steps: int, image_keys: list[str]) -> None:
    """Checks that need the checkpoint's shapes (T_a within the horizon, cameras mapped to its features)."""
    problems = []
    ta = cfg.policy.n_action_steps
    if ta is not None and ta > horizon - n_obs_steps + 1:
        problems.append(
            f"policy.n_action_steps: {ta} is larger than the checkpoint allows "
            f"(at most horizon - n_obs_steps + 1 = {horizon - n_obs_steps + 1})"
        )
    for i, cam in enumerate(cfg.cameras):
        if cam.policy_key is not None and cam.policy_key not in image_keys:
            problems.append(
                f"cameras[{i}].policy_key: '{cam.policy_key}' is not an image feature of the checkpoint "
                f"(allowed: {', '.join(image_keys) or 'none'})"
            )
    if problems:
        raise ConfigError(problems)
