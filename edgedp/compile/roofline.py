"""This machine's roofline: measured memory bandwidth and peak GEMM throughput per precision.

Why measured and not from a data sheet: on a shared 2-core VM or a Jetson in a power mode the
numbers that bound a batch-1 denoising step are what the process can actually get, with the
thread count torch uses.  Bandwidth is a multi-threaded read-reduce over a buffer far larger
than the last-level cache (weights are read, never written, during a step); peak is a square
GEMM large enough to saturate the cores.  Results are cached per (CPU/GPU, threads, torch).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgedp.host_info import cpu_model
from firmware_bridge.atomic_file import atomic_write_text


def _best_time(fn, repeats: int) -> float:
    """Fastest of `repeats`: a roofline is what the hardware *can* do, and on a shared machine
    the slower runs measure the neighbours, not the memory system."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.min(ts))


def cpu_flags() -> list[str]:
    """The low-precision instruction sets that matter here (AVX-512 BF16/VNNI, AMX, ARM dot product)."""
    want = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "asimddp", "i8mm", "bf16"}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return sorted(set(line.split(":", 1)[1].split()) & want)
    except OSError:
        pass
    return []


def _measure_cpu(mb: int) -> dict[str, Any]:
    n = mb * 1024 * 1024 // 4
    buf = torch.ones(n, dtype=torch.float32)
    bw = n * 4 / _best_time(buf.sum, 7) / 1e9
    buf = None  # free the buffer before the GEMMs allocate theirs
    peak: dict[str, float] = {}
    s = 2048
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(s, s).to(dt), torch.randn(s, s).to(dt)
        peak[name] = 2 * s ** 3 / _best_time(lambda: torch.mm(a, b), 5) / 1e9
    try:  # int8 through the same kernel family the cpu-int8 backend uses
        from edgedp.compile.int8 import Int8Gemm, quantize_rows

        q, sc = quantize_rows(torch.randn(s, s))
        g = Int8Gemm(q, sc, None)
        x = torch.randn(s, s)
        peak["int8"] = 2 * s ** 3 / _best_time(lambda: g(x), 5) / 1e9
    except Exception:  # noqa: BLE001 - no quantized engine: no int8 peak
        pass
    return {"bandwidth_gbs": bw, "peak_gflops": peak}


def _measure_cuda(device: torch.device, mb: int) -> dict[str, Any]:
    n = mb * 1024 * 1024 // 4
    buf = torch.ones(n, dtype=torch.float32, device=device)

    def timed(fn, reps):
        fn()
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) / reps

    bw = n * 4 / timed(lambda: buf.sum(), 20) / 1e9
    peak = {}
    s = 4096
    for name, dt in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        a, b = torch.randn(s, s, device=device, dtype=dt), torch.randn(s, s, device=device, dtype=dt)
        peak[name] = 2 * s ** 3 / timed(lambda: a @ b, 10) / 1e9
    peak["int8"] = peak["fp16"] * 2  # TensorRT int8 tensor cores: twice fp16 on Ampere/Orin
    return {"bandwidth_gbs": bw, "peak_gflops": peak}


def machine_roofline(device: str | torch.device = "cpu", cache_dir: Path | None = None,
                     refresh: bool = False, buffer_mb: int = 256) -> dict[str, Any]:
    dev = torch.device(device)
    ident = {"device": str(dev), "name": cpu_model() if dev.type == "cpu" else torch.cuda.get_device_name(dev),
             "threads": torch.get_num_threads(), "torch": torch.__version__, "buffer_mb": buffer_mb}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_dir or Path(os.environ.get("EDGEDP_CACHE") or Path.home() / ".cache" / "edgedp")
    path = Path(root) / f"roofline-{key}.json"
    if path.is_file() and not refresh:
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    res = _measure_cpu(buffer_mb) if dev.type == "cpu" else _measure_cuda(dev, buffer_mb)
    res.update(ident)
    res["cpu_flags"] = cpu_flags() if dev.type == "cpu" else []
    res["measured_unix"] = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(res, indent=2))
    return res


def step_flops(unet: torch.nn.Module, horizon: int, action_dim: int, cond_dim: int) -> int:
    """FLOPs of one denoiser call at batch 1 (convolutions, GEMMs), counted by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, horizon, action_dim)
    t = torch.zeros(1, dtype=torch.long)
    g = torch.zeros(1, cond_dim)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet.to("cpu", torch.float32)(x, t, g)
    return int(counter.get_total_flops())


def roofline_ms(weight_bytes: int, flops: int, bandwidth_gbs: float, peak_gflops: float) -> float:
    """Lower bound on one step: the slower of streaming the weights once and doing the arithmetic."""
    return 1e3 * max(weight_bytes / (bandwidth_gbs * 1e9), flops / (peak_gflops * 1e9))
