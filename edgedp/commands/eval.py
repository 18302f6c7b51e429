"""`edgedp eval CONFIG --episodes N`: closed-loop success of a policy on the simulated reach task, through the
full runtime, with injected latency and a synchronous baseline (edgedp/evaluation)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from edgedp.errors import UserError

PUSHT_TIMEOUT_S = 30.0  # gym-pusht: 300 control steps at 10 Hz
PUSHT_FIRST_EVAL_SEED = 100000  # held out: `edgedp record --task pusht` uses gym-pusht seeds from 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="closed-loop evaluation episodes on the simulated reach task",
        description="Run N episodes of the config's simulated task (scene.task) through the full runtime: "
                    "emulated servos, virtual camera, planner and servo loop, exactly as `edgedp run`. Each "
                    "episode has its own target (scene seed SEED+i) and ends at success (the tip within the "
                    "success radius, judged from the emulator's true joint angles) or at the timeout. Reports "
                    "success rate, time to success and chunk-join discontinuity per condition.")
    p.add_argument("config", help="run config YAML with the simulated scene (see examples/sim.yaml, "
                                  "examples/sim_multimodal.yaml)")
    p.add_argument("--episodes", type=int, required=True, help="episodes per condition")
    p.add_argument("--json", type=Path, default=None, help="write the results document here")
    p.add_argument("--latency-ms", default=None,
                   help="extra inference latency to inject, comma-separated (e.g. 0,50,100,200); "
                        "default: the config's policy.extra_latency_ms")
    p.add_argument("--sync", action="store_true",
                   help="synchronous baseline: the arm holds while the policy thinks")
    p.add_argument("--both", action="store_true", help="run every latency asynchronously and synchronously")
    p.add_argument("--seed", type=int, default=None,
                   help="scene seed of the first episode (default 0, training data uses 1000+; pusht: 100000, "
                        "gym-pusht's seed, training data uses 0..)")
    p.add_argument("--episode-timeout", type=float, default=None,
                   help="seconds per episode (default 10; pusht: 30, gym-pusht's 300 steps at 10 Hz)")
    p.add_argument("--dwell", type=float, default=0.2,
                   help="seconds the tip must stay within the success radius to count (default 0.2)")
    p.add_argument("--checkpoint", default=None, help="override policy.checkpoint")
    p.add_argument("--backend", default=None, help="override policy.backend")
    p.add_argument("--precision", default=None, help="override policy.precision")
    p.add_argument("--steps", default=None,
                   help="override policy.steps (denoising steps K); 'checkpoint' uses the checkpoint's own K")
    p.add_argument("--sampler", default=None, metavar="{ddim,ddpm,dpmsolver++,unipc}",
                   help="override policy.sampler (denoising method over the same weights, docs/samplers.md)")
    p.add_argument("--timesteps", default=None, metavar="LIST|logsnr|spacing",
                   help="override policy.timesteps (dpmsolver++/unipc): descending train timesteps such as 90,60,16,2, "
                        "'logsnr' (uniform in log-SNR), or 'spacing' for the checkpoint's timestep spacing")
    p.add_argument("--warm-start", default=None, metavar="{on,off}",
                   help="override policy.warm_start (each chunk starts from the previous one, noised part-way)")
    p.add_argument("--join", default=None, metavar="{crossfade,ensemble,inpaint}",
                   help="override safety.join (how consecutive chunks are joined)")
    p.add_argument("--inpaint-overlap", default=None, metavar="{soft,none}",
                   help="override safety.inpaint_overlap (join inpaint, guided form: softly follow every step the "
                        "previous chunk still predicts, or only the decided steps)")
    p.add_argument("--inpaint-form", default=None, metavar="{replace,guided}",
                   help="override safety.inpaint_form (join inpaint: overwrite the decided steps at every denoising "
                        "step, or guide towards them)")
    p.add_argument("--video", type=Path, default=None, metavar="DIR",
                   help="save one mp4 per episode in DIR, named so failures sort first: the policy camera, or the "
                        "scene's own render when the policy sees no image (a state config)")
    p.set_defaults(func=run)


def parse_latencies(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = float(part)
        except ValueError:
            raise UserError(f"--latency-ms: '{part}' is not a number of milliseconds "
                            f"(give a comma-separated list such as 0,50,100,200)") from None
        if not math.isfinite(v) or v < 0:
            raise UserError(f"--latency-ms: {part} must be a finite number of milliseconds >= 0")
        out.append(v)
    return out


def parse_timesteps(text: str, flag: str = "--timesteps"):
    """'90,60,16,2' -> [90, 60, 16, 2]; 'logsnr' stays; 'spacing' -> None. The list's order and range are checked
    where the config is validated (edgedp.config, edgedp.app), with the checkpoint's number of train steps."""
    text = str(text).strip()
    if text in ("logsnr", "spacing"):
        return None if text == "spacing" else text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"{flag}: '{text}' is not a comma-separated list of whole timesteps such as 90,60,16,2 "
                        f"(or logsnr, spacing)") from None


def apply_overrides(cfg, checkpoint=None, backend=None, precision=None, steps=None, sampler=None,
                    join=None, warm_start=None, timesteps=None, inpaint_overlap=None, inpaint_form=None) -> None:
    """Command-line overrides of the policy and safety sections, checked against the config schema's own allowed
    values; edgedp/app.py's build then validates the result like any config (e.g. a sampler that does not suit K)."""
    from edgedp.config import BACKENDS, INPAINT_FORMS, INPAINT_OVERLAPS, JOINS, PRECISIONS, PRESET_PREFIX, SAMPLERS

    p = cfg.policy
    if checkpoint is not None:
        if not checkpoint.startswith(PRESET_PREFIX) and not Path(checkpoint).exists():
            raise UserError(f"--checkpoint: {checkpoint} does not exist (a checkpoint folder/file, or preset:NAME)")
        p.checkpoint = checkpoint if checkpoint.startswith(PRESET_PREFIX) else str(Path(checkpoint).resolve())
    if backend is not None:
        p.backend = _one_of("backend", backend, BACKENDS)
    if precision is not None:
        p.precision = _one_of("precision", precision, PRECISIONS)
    if steps is not None:
        if str(steps) == "checkpoint":
            p.steps = None
        else:
            try:
                k = int(steps)
            except ValueError:
                raise UserError(f"--steps: '{steps}' is not a whole number (or 'checkpoint')") from None
            if not 1 <= k <= 1000:
                raise UserError(f"--steps: {k} is out of range (1 to 1000)")
            p.steps = k
    if sampler is not None:
        p.sampler = _one_of("sampler", sampler, SAMPLERS)
        if p.sampler in ("ddim", "ddpm") and timesteps is None:
            # The config's explicit timesteps (the Push-T state example's logsnr) are for the multistep solvers:
            # asking for DDIM/DDPM on the command line means their own spacing, not an error.
            p.timesteps = None
    if join is not None:
        cfg.safety.join = _one_of("join", join, JOINS)
    if inpaint_overlap is not None:
        cfg.safety.inpaint_overlap = _one_of("inpaint-overlap", inpaint_overlap, INPAINT_OVERLAPS)
    if inpaint_form is not None:
        cfg.safety.inpaint_form = _one_of("inpaint-form", inpaint_form, INPAINT_FORMS)
    if warm_start is not None:
        p.warm_start = _one_of("warm-start", warm_start, ("on", "off")) == "on"
    if timesteps is not None:
        # Re-validated as a policy section, so the list and its fit with steps/sampler fail like in a config file.
        from edgedp.config import PolicyConfig, _problems
        from pydantic import ValidationError

        try:
            checked = PolicyConfig.model_validate({**p.model_dump(exclude={"timesteps"}),
                                                   "timesteps": parse_timesteps(timesteps)})
        except ValidationError as exc:
            raise UserError(f"--timesteps: {_problems(exc)[0].split(': ', 1)[-1]}") from None
        p.timesteps = checked.timesteps


def _one_of(flag: str, value: str, allowed) -> str:
    """``value`` when it is one of ``allowed``; else the one-line user error naming the flag and the choices."""
    if value not in allowed:
        raise UserError(f"--{flag}: unknown {flag} '{value}' (allowed: {', '.join(allowed)})")
    return value


def run(args: argparse.Namespace) -> int:
    from edgedp.config import load_config
    from edgedp.console import make_console

    if args.episodes < 1:
        raise UserError(f"--episodes: must be at least 1, got {args.episodes}")
    cfg = load_config(args.config)
    pusht = cfg.scene is not None and cfg.scene.task == "pusht"
    if args.episode_timeout is None:
        args.episode_timeout = PUSHT_TIMEOUT_S if pusht else 10.0
    if args.seed is None:
        args.seed = PUSHT_FIRST_EVAL_SEED if pusht else 0
    if not (math.isfinite(args.episode_timeout) and args.episode_timeout > 0):
        raise UserError(f"--episode-timeout: must be a positive number of seconds, got {args.episode_timeout}")
    if not (math.isfinite(args.dwell) and 0 <= args.dwell < args.episode_timeout):
        raise UserError(f"--dwell: must be >= 0 seconds and shorter than the episode timeout, got {args.dwell}")
    if args.json is not None:
        if args.json.is_dir():
            raise UserError(f"--json: {args.json} is a directory (give a .json file path)")
        if not args.json.parent.exists():
            raise UserError(f"--json: folder {args.json.parent} does not exist")
    if args.sync and args.both:
        raise UserError("--sync and --both: pick one (--both already includes the synchronous runs)")
    if args.video is not None and args.video.exists() and not args.video.is_dir():
        raise UserError(f"--video: {args.video} is a file (give a folder for the episode videos)")
    apply_overrides(cfg, args.checkpoint, args.backend, args.precision, args.steps, args.sampler, args.join,
                    args.warm_start, args.timesteps, args.inpaint_overlap, args.inpaint_form)
    latencies = parse_latencies(args.latency_ms) if args.latency_ms is not None else [cfg.policy.extra_latency_ms]
    modes = [False, True] if args.both else [bool(args.sync)]

    from edgedp.evaluation.episodes import Condition, EvalSession
    from edgedp.evaluation.report import build_document, table, write_json

    conditions = [Condition(lat, s) for s in modes for lat in latencies]
    seeds = list(range(args.seed, args.seed + args.episodes))
    console = make_console()
    videos = None

    def progress(c: Condition, r) -> None:
        if videos is not None:
            videos.cut(c.label, r.index, r.seed, r.success)
        if r.max_coverage is not None:  # Push-T
            what = (f"[green]success[/] in {r.time_to_success_s:.2f} s" if r.success else
                    "[red]watchdog stop[/]" if r.stopped_by == "watchdog" else "[red]timeout[/]") + \
                f" (max coverage {r.max_coverage:.3f}, T {r.final_distance_m * 1000:.0f} mm from the goal)"
        else:
            what = (f"[green]success[/] in {r.time_to_success_s:.2f} s" if r.success
                    else f"[red]timeout[/] ({r.final_distance_m * 100:.1f} cm from a target)")
        console.print(f"  {c.label:<14} episode {r.index + 1}/{len(seeds)} seed {r.seed}: {what}; "
                      f"join jump {r.join_jump_position_rad:.4f} rad, {r.chunks} chunks", highlight=False)

    errors: list = []

    def on_error(c: Condition, e) -> None:
        if videos is not None:
            videos.cut(c.label, e.index, e.seed, False, note="error")
        console.print(f"  {c.label:<14} episode {e.index + 1}/{len(seeds)} seed {e.seed}: [red]error[/] "
                      f"({e.error}); going on with the next episode", highlight=False)
        errors.append((c, e))

    session = EvalSession(cfg)  # every check that can fail happens here, before anything starts
    if args.video is not None:
        from edgedp.view.episode_video import for_session

        videos = for_session(args.video, session.parts)
    from edgedp.cli import Terminated

    runs: list = []  # (condition, its finished episodes): filled as episodes finish, so an interrupt keeps them
    stop = None  # None, or (exit code, reason) when Ctrl-C / SIGTERM ended the evaluation early
    try:
        with session:
            for c in conditions:
                done: list = []
                runs.append((c, done))
                session.run(c, seeds, args.episode_timeout, lambda c_, r: (done.append(r), progress(c_, r)),
                            args.dwell, on_error=on_error)
    except KeyboardInterrupt:  # Ctrl-C, between episodes or while an episode's runtime ran
        stop = (130, "interrupted")
    except Terminated:  # SIGTERM between episodes (edgedp/cli.py) or while an episode's runtime ran (episodes.py)
        stop = (143, "terminated (SIGTERM)")
    except RuntimeError as exc:  # the devices failed to start: no episode ran
        raise UserError(str(exc), exit_code=1) from None
    finally:
        if videos is not None:
            videos.close()
            console.print(f"videos: {len(videos.written)} in {args.video} (failures first)", highlight=False)
    doc = build_document(runs, dict(session.summary, dwell_s=args.dwell), cfg.scene.task, str(args.config), seeds,
                         args.episode_timeout, errors=errors, interrupted=stop is not None)
    console.print(table(doc))
    if args.json is not None:
        write_json(args.json, doc)  # atomic: a reader never sees half a document, interrupted or not
        console.print(f"results: {args.json}")
    finished = sum(len(done) for _, done in runs)
    if stop is not None:
        raise UserError(f"{stop[1]} after {finished} finished episode(s) and {len(errors)} error(s); "
                        f"{'results written to ' + str(args.json) if args.json is not None else 'no --json given'}",
                        exit_code=stop[0])
    if errors:
        raise UserError(f"{len(errors)} of {finished + len(errors)} episode(s) failed with an error "
                        f"(the 'errors' rows of the results; first: seed {errors[0][1].seed}: {errors[0][1].error})",
                        exit_code=1)
    return 0
