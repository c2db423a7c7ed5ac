"""Is bf16 fast on this machine? fp32 against bf16 on the shapes the default model trains.

    PYTHONPATH=. python bench/precision.py [--threads 2] [--repeats 5]

The default params autocast training to bf16 (`<stage>.bf16: true`) and generate in
bf16 (`generation.dtype: bfloat16`). That is 1.5-2x faster than fp32 on a CPU with
avx512_bf16 or AMX, but on a CPU without them (AVX2 only) PyTorch emulates bf16 and it
is far slower than fp32. This prints whether oneDNN has a native bf16 path here, then
times, in fp32 and under bf16 autocast:
- a 1024x1024 matrix product (GFLOP/s);
- forward + backward of one SmolLM2-135M-sized MLP block (hidden 576, intermediate
  1536) on a batch of 16 x 160 tokens, as in a LoRA training step.
Needs nothing but torch; no model or data.
"""

import argparse
import time

import torch

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernels on the first call
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def matmul(bf16: bool):
    a = torch.randn(1024, 1024)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            a @ a
    return run


def mlp_step(bf16: bool):
    hidden, inner = 576, 1536
    block = torch.nn.Sequential(torch.nn.Linear(hidden, inner), torch.nn.SiLU(), torch.nn.Linear(inner, hidden))
    x = torch.randn(16 * 160, hidden, requires_grad=True)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = block(x).float().pow(2).mean()
        loss.backward()
    return run


native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
      f"{torch.backends.cpu.get_cpu_capability()}, oneDNN native bf16: {native}")
print(f"{'workload':<28} {'fp32 s':>9} {'bf16 s':>9} {'bf16 / fp32':>12}")
for name, make in (("matmul 1024^3", matmul), ("MLP fwd+bwd 2560x576", mlp_step)):
    fp32, bf16 = timed(make(False), args.repeats), timed(make(True), args.repeats)
    extra = f"   ({2 * 1024**3 / fp32 / 1e9:.1f} vs {2 * 1024**3 / bf16 / 1e9:.1f} GFLOP/s)" if "matmul" in name else ""
    print(f"{name:<28} {fp32:>9.4f} {bf16:>9.4f} {bf16 / fp32:>11.2f}x{extra}")
print("bf16 is " + ("native here: the bf16 defaults apply." if native else
                    "emulated here: the stages compute in float32 instead (posttrain/runtime.py:use_bf16)."))
