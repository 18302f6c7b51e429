"""Per-episode and dataset statistics in LeRobot's format (meta/stats.json and the stats/* episode columns).

Follows LeRobot 0.4.4 src/lerobot/datasets/compute_stats.py: compute_episode_stats (vectors: per-dimension
min/max/mean/std/count and quantiles q01 q10 q50 q90 q99 over the frames; images and videos: per-channel
values in [0, 1] shaped (3, 1, 1) over a sample of frames, sample_indices / auto_downsample_height_width) and
aggregate_stats (min of mins, max of maxes, count-weighted means, the parallel-variance formula for std,
count-weighted quantiles). LeRobot estimates quantiles from histograms; edgedp computes them exactly on the
same samples, which is what those histograms approximate.
"""
from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(round(q * 100)):02d}" for q in QUANTILES)


def sample_indices(n: int) -> np.ndarray:
    """Which frames of an n-frame episode the image statistics use (compute_stats.estimate_num_samples)."""
    k = n if n < 100 else max(100, min(int(n ** 0.75), 10_000))
    return np.round(np.linspace(0, n - 1, k)).astype(int)


def _downsample(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C): every k-th pixel once the larger side reaches 300 (auto_downsample_height_width)."""
    h, w = images.shape[1:3]
    if max(h, w) < 300:
        return images
    k = int(w / 150) if w > h else int(h / 150)
    return images[:, ::k, ::k]


def _vector_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    stats = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": x.mean(axis=0), "std": x.std(axis=0),
             "count": np.array([x.shape[0]], dtype=np.int64)}
    qs = np.quantile(x, QUANTILES, axis=0) if x.shape[0] >= 2 else np.stack([stats["mean"]] * len(QUANTILES))
    for key, q in zip(QUANTILE_KEYS, qs):
        stats[key] = q
    return stats


def _uint8_channel_stats(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel min/max/mean/std/quantiles of uint8 pixels from a 256-bin histogram per channel: exact (the
    same values as numpy on the float pixels, quantiles with numpy's linear interpolation) and ~50x faster."""
    n = pixels.shape[0]
    levels = np.arange(256, dtype=np.float64)
    out: dict[str, list] = {k: [] for k in ("min", "max", "mean", "std", *QUANTILE_KEYS)}
    for c in range(pixels.shape[1]):
        hist = np.bincount(pixels[:, c], minlength=256).astype(np.float64)
        mean = (hist * levels).sum() / n
        out["mean"].append(mean)
        out["std"].append(np.sqrt((hist * (levels - mean) ** 2).sum() / n))
        nz = np.flatnonzero(hist)
        out["min"].append(float(nz[0]))
        out["max"].append(float(nz[-1]))
        cum = np.cumsum(hist)
        for key, q in zip(QUANTILE_KEYS, QUANTILES):
            pos = q * (n - 1)
            lo, frac = int(np.floor(pos)), pos - np.floor(pos)
            v_lo = float(np.searchsorted(cum, lo + 1))  # the lo-th order statistic (0-based)
            v_hi = float(np.searchsorted(cum, min(lo + 1, n - 1) + 1))
            out[key].append(v_lo + frac * (v_hi - v_lo))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def feature_stats(values: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """Statistics of one feature over one episode: values are (N,) or (N, D), or (N, H, W, 3) uint8 for images."""
    if dtype in ("image", "video"):
        imgs = _downsample(values[sample_indices(len(values))])
        stats = _uint8_channel_stats(imgs.reshape(-1, imgs.shape[-1]))
        stats = {k: v.reshape(-1, 1, 1) / 255.0 for k, v in stats.items()}
        stats["count"] = np.array([len(imgs)], dtype=np.int64)  # images count sampled frames, not pixels
        return stats
    x = np.asarray(values, dtype=np.float64)
    squeeze = x.ndim == 1  # scalar features: stats shaped (1,), as keepdims gives them in LeRobot
    stats = _vector_stats(x.reshape(len(x), -1))
    if squeeze:
        stats = {k: v.reshape(1) if k != "count" else v for k, v in stats.items()}
    return stats


def episode_stats(frames: dict[str, np.ndarray], features: dict[str, dict]) -> dict[str, dict[str, np.ndarray]]:
    return {k: feature_stats(v, features[k]["dtype"]) for k, v in frames.items() if features[k]["dtype"] != "string"}


def aggregate(stats_list: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Dataset statistics from episode statistics (compute_stats.aggregate_stats)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    keys = {k for s in stats_list for k in s}
    for key in sorted(keys):
        parts = [s[key] for s in stats_list if key in s]
        counts = np.stack([np.asarray(p["count"], dtype=np.float64) for p in parts])
        means = np.stack([np.asarray(p["mean"], dtype=np.float64) for p in parts])
        total = counts.sum(axis=0)
        w = counts.reshape(counts.shape + (1,) * (means.ndim - counts.ndim))
        mean = (means * w).sum(axis=0) / total
        var = ((np.stack([np.asarray(p["std"]) ** 2 for p in parts]) + (means - mean) ** 2) * w).sum(axis=0) / total
        agg = {"min": np.min(np.stack([p["min"] for p in parts]), axis=0),
               "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
               "mean": mean, "std": np.sqrt(var), "count": total.astype(np.int64)}
        for q in QUANTILE_KEYS:
            if all(q in p for p in parts):
                agg[q] = (np.stack([np.asarray(p[q], dtype=np.float64) for p in parts]) * w).sum(axis=0) / total
        out[key] = agg
    return out


def to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """meta/stats.json: nested plain lists (utils.serialize_dict)."""
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def from_json(doc: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in doc.items()}


def flatten(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, list]:
    """The stats/<feature>/<stat> columns of an episode row (utils.flatten_dict with sep '/')."""
    return {f"stats/{k}/{s}": np.asarray(v).tolist() for k, d in stats.items() for s, v in d.items()}

