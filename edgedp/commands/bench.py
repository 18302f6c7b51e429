"""`edgedp bench [CKPT | --preset NAME] --steps K --json PATH`: per-stage latency of every backend.

Prints a table, writes the JSON report and a PNG bar chart (next to the JSON unless --png says
where).  The measurement itself lives in edgedp.compile.bench, shared with
benchmarks/denoise_latency.py.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgedp.errors import UserError
from firmware_bridge.atomic_file import atomic_write_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure denoiser latency per backend/precision, roofline and reference",
                       description="Per-stage latency (encoder, one step, scheduler update, chunk) for each "
                                   "backend x precision, the roofline of one step, and the reference run.")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, help="checkpoint path or preset:NAME")
    p.add_argument("--preset", default=None, help="architecture preset (random weights): small, pusht_paper, real_robot, transformer_small, transformer_pusht")
    p.add_argument("--steps", type=int, required=True, help="denoising steps K")
    p.add_argument("--json", required=True, help="where to write the JSON report")
    p.add_argument("--png", default=None, help="bar chart path (default: the JSON path with .png)")
    p.add_argument("--backends", default=None,
                   help="comma list of backend:precision (default: everything available here)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per stage after warm-up (default 10)")
    p.add_argument("--loop-repeats", type=int, default=None, help="timed repeats of whole chunks (default: --repeats)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls per stage (default 2)")
    p.add_argument("--rmse-samples", type=int, default=2, help="held-out observations for the action error (default 2)")
    p.add_argument("--cache", default=None, help="compiled-sampler cache directory")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for every backend and the reference (default: torch's choice; 1 is steadier on a shared machine)")
    p.add_argument("--vs-lerobot", action="store_true",
                   help="also time LeRobot's own DiffusionPolicy (select_action, same weights) in its venv, "
                        "alternating with edgedp's backends; threads default to 1 on both sides")
    p.add_argument("--lerobot-python", default=None,
                   help="python of a venv with lerobot installed (default: $EDGEDP_LEROBOT_PYTHON or "
                        "/work/venvs/lerobot044/bin/python)")


def parse_pairs(text: str | None) -> list[tuple[str, str]] | None:
    if not text:
        return None
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if ":" not in item:
            raise UserError(f"--backends entry '{item}' must be backend:precision, e.g. cpu-int8:int8")
        b, p = item.split(":", 1)
        out.append((b, p))
    return out


def _start_lerobot(args: argparse.Namespace, ref: str, policy, err):
    """LeRobot's process over the same weights; edgedp's policy re-imported from that directory when LeRobot
    had to write it (a preset), so both sides hold identical tensors."""
    from edgedp.compile import lerobot_ref
    from edgedp.compile.cache import default_cache_dir
    from edgedp.policy_loading import load_policy

    if args.device != "cpu":
        raise UserError("--vs-lerobot compares on cpu (LeRobot's venv here has no GPU path set up)")
    python = args.lerobot_python or lerobot_ref.default_python()
    lerobot_ref.check_python(python)
    lerobot_ref.lerobot_config(policy.spec, args.steps)  # refuse architectures LeRobot cannot build, first
    cache = (Path(args.cache) if args.cache else default_cache_dir()).parent / "lerobot_ref"
    with err.status("LeRobot: preparing the same weights"):
        model_dir = lerobot_ref.resolve(ref, policy, args.steps, python, cache)
        if str(model_dir) != str(ref):
            policy = load_policy(str(model_dir))
    with err.status("LeRobot: loading its policy in its venv"):
        return lerobot_ref.LeRobotReference(python, model_dir, args.steps, args.threads or 1), policy


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from edgedp.compile.api import check_request
    from edgedp.compile.bench import TABLE_COLUMNS, run_bench, table_rows, write_chart
    from edgedp.console import make_console
    from edgedp.policy_loading import load_policy

    if args.vs_lerobot and args.threads is None:
        args.threads = 1  # the headline ratio is taken at LeRobot's and edgedp's same thread count
    if args.lerobot_python and not args.vs_lerobot:
        raise UserError("--lerobot-python needs --vs-lerobot")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if (args.checkpoint is None) == (args.preset is None):
        raise UserError("give exactly one of CKPT or --preset NAME")
    ref = args.checkpoint or f"preset:{args.preset}"
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    for name in ("repeats", "rmse_samples"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    pairs = parse_pairs(args.backends)
    for b, p in pairs or []:
        check_request(b, p, args.device, args.steps)
    json_path = Path(args.json)
    if not json_path.parent.exists():
        raise UserError(f"--json: directory {json_path.parent} does not exist")
    png_path = Path(args.png) if args.png else json_path.with_suffix(".png")

    console = make_console()
    err = make_console(stderr=True)
    policy = load_policy(ref)
    lerobot = None
    if args.vs_lerobot:
        lerobot, policy = _start_lerobot(args, ref, policy, err)
    try:
        with err.status("benchmarking") as status:
            report = run_bench(policy, args.steps, pairs, args.device, args.repeats, args.warmup, args.loop_repeats,
                               args.rmse_samples, args.cache, progress=lambda m: status.update(m), lerobot=lerobot)
    finally:
        if lerobot is not None:
            lerobot.close()
    report["checkpoint"] = ref
    m = report["machine"]
    title = (f"{ref}: {report['parameters']['denoiser'] / 1e6:.1f} M {policy.spec.denoiser} parameters, K={args.steps}, "
             f"{m['name']} x{m['threads']} threads, {m['bandwidth_gbs']:.1f} GB/s")
    table = Table(title=title)
    label_width = max([len("backend/precision"), *map(len, report["results"])])
    for col in TABLE_COLUMNS:
        if col == "backend/precision":  # never shortened: the label is what a reader looks for
            table.add_column(col, justify="left", no_wrap=True, min_width=label_width)
        else:
            table.add_column(col, justify="right")
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    if "reference_chunk_ms" in report:
        console.print(f"reference ({report['reference']}): {report['reference_chunk_ms']:.1f} ms per chunk")
    if "lerobot_chunk_ms" in report:
        lr = report["lerobot"]
        console.print(f"LeRobot {lr['lerobot']} (torch {lr['torch']}, {lr['scheduler']}, select_action, "
                      f"{lr['threads']} thread(s)): {report['lerobot_chunk_ms']:.1f} ms per chunk, same weights")
    atomic_write_text(json_path, json.dumps(report, indent=2, default=str))
    write_chart(report, png_path, title=f"{ref}, K={args.steps}")
    console.print(f"wrote {json_path} and {png_path}")
    return 0
