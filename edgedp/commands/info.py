"""`edgedp info PATH`: what a checkpoint contains and where each setting came from.

Works on native directories (reads policy.yaml and the safetensors header only), LeRobot
`pretrained_model/` directories and original `.ckpt` files (read safely, not converted).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from edgedp.console import make_console
from edgedp.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarize a checkpoint (native, LeRobot or original .ckpt)")
    p.add_argument("path", help="checkpoint directory or .ckpt file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.checkpoint_import import api
    from models.checkpoint_import.errors import CheckpointError
    from models.native import NativeCheckpointError, is_native_dir

    path = Path(args.path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    try:
        if is_native_dir(path):
            rows = native_rows(path)
            title = f"native checkpoint {path}"
        elif api.detect(path) is not None:
            rows = api.summary_rows(api.read_foreign(path, weights=False))
            title = f"{api.detect(path)} checkpoint {path}"
        else:
            raise UserError(f"{path}: not a native, LeRobot or original Diffusion Policy checkpoint")
    except (CheckpointError, NativeCheckpointError) as exc:
        raise UserError("; ".join(s.strip() for s in str(exc).splitlines() if s.strip())) from None
    table = Table(title=title)
    for col in ("item", "value", "from"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*r)
    make_console().print(table)
    return 0


def native_rows(path: Path) -> list[tuple[str, str, str]]:
    """Rows from policy.yaml and the weights' header (no tensor data is read)."""
    from safetensors import SafetensorError, safe_open

    from models.native import WEIGHTS_FILE, NativeCheckpointError, read_spec

    spec, doc = read_spec(path)
    prov = {str(k): str(v) for k, v in (doc.get("provenance") or {}).items()}
    sp = {str(k): str(v) for k, v in (spec.provenance or {}).items()}
    sp.update(prov)
    counts = {"unet": 0, "transformer": 0, "obs_encoder": 0}
    wf = path / WEIGHTS_FILE
    try:
        with safe_open(str(wf), "pt") as f:
            for k in f.keys():
                n = 1
                for d in f.get_slice(k).get_shape():
                    n *= int(d)
                head = k.split(".", 1)[0]
                if head in counts and not k.rsplit(".", 1)[-1] in ("pos_grid", "pos_x", "pos_y", "temperature",
                                                                   "running_mean", "running_var", "num_batches_tracked",
                                                                   "mask", "memory_mask"):
                    counts[head] += n
    except (SafetensorError, OSError) as exc:
        raise NativeCheckpointError(f"{wf}: unreadable ({exc})") from None
    src = spec.source or sp.get("imported_from", "policy.yaml")
    rows = [("format", "edgedp-native", str(path)),
            ("architecture", sp.get("architecture", "DiffusionPolicy (transformer)" if spec.denoiser == "transformer"
                                        else "DiffusionPolicy (U-Net)"), src),
            ("parameters: denoiser", f"{counts[spec.denoiser]:,}", WEIGHTS_FILE),
            ("parameters: encoder", f"{counts['obs_encoder']:,}", WEIGHTS_FILE)]
    e = spec.encoder
    for k, s in spec.image_features.items():
        rows.append((f"camera {k}", "x".join(map(str, s)), sp.get("images", "policy.yaml")))
    if spec.image_features:
        pool = f"spatial softmax {e.num_keypoints} kp" if e.pool == "spatial_softmax" else "global avg pool"
        proj = f" -> Linear {e.feature_dim}" if getattr(e, "project", True) else " (no projection)"
        norm_note = ", ImageNet re-normalization" if getattr(e, "imagenet_norm", False) else ""
        rows.append(("image encoder", f"{e.backbone} {e.norm}norm width {e.width}, {pool}{proj}, "
                                      f"{'shared' if e.shared else 'one per camera'}{norm_note}",
                     sp.get("image encoder", "policy.yaml")))
        hw = lambda v: "none" if not v else f"{v[0]}x{v[1]}"  # noqa: E731
        rows.append(("resize / crop", f"{hw(e.resize_shape)} / {hw(e.crop_shape)} (centre)",
                     sp.get("crop", sp.get("crop_shape", "policy.yaml"))))
    for k, s in spec.state_features.items():
        rows.append((f"state {k}", str(s[0]), sp.get("state", "policy.yaml")))
    rows.append((f"action {spec.action_key}", str(spec.action_dim), sp.get("action", "policy.yaml")))
    rows.append(("per-frame order", ", ".join(spec.resolved_feature_order), "policy.yaml"))
    rows.append(("horizon / n_obs_steps / n_action_steps", f"{spec.horizon} / {spec.n_obs_steps} / {spec.n_action_steps}",
                 sp.get("horizon", "policy.yaml")))
    if spec.denoiser == "transformer":
        t = spec.transformer
        rows.append(("transformer", f"{t.n_layer} layers, {t.n_head} heads, n_emb {t.n_emb}, "
                                    f"{'causal' if t.causal_attn else 'full'} attention, condition encoder "
                                    f"{f'{t.n_cond_layers}-layer attention' if t.n_cond_layers else 'MLP'}",
                     sp.get("transformer", "policy.yaml")))
    else:
        u = spec.unet
        rows.append(("U-Net", f"down_dims {u.down_dims}, kernel {u.kernel_size}, groups {u.n_groups}, step emb "
                              f"{u.diffusion_step_embed_dim}, FiLM scale {u.cond_predict_scale}", sp.get("unet", "policy.yaml")))
    s = spec.scheduler
    rows.append(("scheduler", f"{str(s.get('kind', '?')).upper()} {s.get('beta_schedule', '')} "
                              f"T={s.get('num_train_timesteps', '?')} {s.get('prediction_type', '')} "
                              f"clip={s.get('clip_sample', '')}", sp.get("scheduler", "policy.yaml")))
    rows.append(("K (inference steps)", str(s.get("num_inference_steps")), sp.get("num_inference_steps", "policy.yaml")))
    conv = spec.normalization.convention
    for k in spec.resolved_feature_order + [spec.action_key]:
        mode = spec.norm_mode(k)
        what = "scale/offset (LinearNormalizer)" if conv == "original" and mode != "identity" else mode.upper()
        rows.append((f"normalize {k}", what, sp.get("normalization", "policy.yaml")))
    for key in ("imported_from", "weights", "saved_at"):
        if key in sp:
            rows.append((key, sp[key], "policy.yaml provenance"))
    return rows
