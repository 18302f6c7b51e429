"""int4 go/no-go probe: one paper-size GEMM (M = 16 rows, K = 2048 x 5, N = 2048) at batch 1, 1 thread.

fp32 matmul vs PyTorch's CPU int4 weight-only kernel (``_weight_int4pack_mm_for_cpu``, group 128, bf16
activations) vs the int8-weight GEMM cpu-int8 uses. Decides whether an int4 backend is worth building on
this CPU (docs/compile.md, Known limits):  python benchmarks/vs_lerobot_int4_probe.py
"""
import torch, time
torch.set_num_threads(1)
M, K, N = 16, 10240, 2048
x = torch.randn(M, K); w = torch.randn(N, K) * 0.02
def t(fn, n=7):
    fn(); ts=[]
    for _ in range(n):
        t0=time.perf_counter(); fn(); ts.append(time.perf_counter()-t0)
    return sorted(ts)[n//2]*1e3
print("fp32", t(lambda: x @ w.t()))
gs = 128
wg = w.reshape(N, K // gs, gs)
mn, mx = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
scale = (mx - mn).clamp_min(1e-8) / 15
zero = mn
q = ((wg - mn) / scale).round().clamp(0, 15).to(torch.int32).reshape(N, K)
try:
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = torch.stack([scale.reshape(N, -1), (zero + 8 * scale).reshape(N, -1)], -1).transpose(0, 1).contiguous()
    xb = x.to(torch.bfloat16)
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, gs, sz.to(torch.bfloat16))
    ref = x @ (q.reshape(N, K // gs, gs) * scale + zero).reshape(N, K).t()
    print("int4 bf16", t(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, gs, sz.to(torch.bfloat16))), "relerr", float((out.float()-ref).abs().max()/ref.abs().max()))
except Exception as e:
    print("int4 failed:", type(e).__name__, str(e)[:200])
from edgedp.compile.int8 import quantize_module
lin = torch.nn.Linear(K, N, bias=False); lin.weight.data = w
m = torch.nn.Sequential(lin); quantize_module(m)
with torch.inference_mode():
    print("cpu-int8 linear", t(lambda: m(x)))
