"""Chapter 01 benchmark: gradient accumulation against the alternatives a user would pick.

1. kexue.keras.GradientAccumulation against Keras's built-in ``gradient_accumulation_steps`` (aim <= 1.10x),
   on the tensorflow and the torch backends, through ``model.fit``;
2. kexue.torch.GradientAccumulation against the hand-written loop (loss / n, step every n-th; aim <= 1.05x);
3. memory of one update of b examples as n micro-batches against one batch of b: the activations autograd
   saves, and the measured peak (CUDA allocator on a GPU; growth of the resident set size, sampled every 0.2 ms, on a CPU).

Each contender runs in alternation with its rival, repeated, and the ratio of the medians is reported.
Run from the repository root: ``python benchmarks/accumulation.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from common import keras_mlp_workload, peak_rss_growth  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def convnet(width: int = 32):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = []
    for c_in in (3, width, width, width):
        layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))


def keras_times(repeats: int) -> dict:
    """Seconds per micro-batch in model.fit: our wrapper and Keras's built-in, alternated."""
    import keras

    from kexue.keras import GradientAccumulation

    ours, x, y = keras_mlp_workload(GradientAccumulation(keras.optimizers.Adam(1e-3), steps=4))
    builtin, _, _ = keras_mlp_workload(keras.optimizers.Adam(1e-3, gradient_accumulation_steps=4))
    contenders = {"kexue": ours, "keras": builtin}
    for m in contenders.values():  # compile / trace once
        m.fit(x[:256], y[:256], batch_size=32, verbose=0)
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, m in contenders.items():
            start = time.perf_counter()
            m.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
            times[name].append((time.perf_counter() - start) / (len(x) // 32))
    return {"backend": keras.backend.backend(), **{k: statistics.median(v) for k, v in times.items()}}


def torch_times(repeats: int) -> dict:
    """Seconds per micro-batch: our wrapper against the hand-written loop, alternated."""
    import torch
    import torch.nn.functional as F

    from kexue.torch import GradientAccumulation

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(512, 3, 32, 32, device=device)
    y = torch.randn(512, 3, device=device)
    n, micro = 4, 32

    def wrapper_epoch(model, opt):
        for k in range(len(x) // micro):
            F.mse_loss(model(x[k * micro:(k + 1) * micro]), y[k * micro:(k + 1) * micro]).backward()
            opt.step()
            opt.zero_grad()

    def hand_epoch(model, opt):
        for k in range(len(x) // micro):
            (F.mse_loss(model(x[k * micro:(k + 1) * micro]), y[k * micro:(k + 1) * micro]) / n).backward()
            if (k + 1) % n == 0:
                opt.step()
                opt.zero_grad()

    setups = {}
    m1 = convnet().to(device)
    setups["kexue"] = (wrapper_epoch, m1, GradientAccumulation(torch.optim.Adam(m1.parameters(), 1e-3), n))
    m2 = convnet().to(device)
    setups["hand-written"] = (hand_epoch, m2, torch.optim.Adam(m2.parameters(), 1e-3))
    times = {name: [] for name in setups}
    for name, (epoch, model, opt) in setups.items():  # warm-up
        epoch(model, opt)
    for _ in range(repeats):
        for name, (epoch, model, opt) in setups.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            epoch(model, opt)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / (len(x) // micro))
    return {"device": device, **{k: statistics.median(v) for k, v in times.items()}}


def memory_of_one_update(n: int, batch: int) -> dict:
    """Run in a fresh process: memory of the first update of `batch` examples as `n` micro-batches."""
    import torch
    import torch.nn.functional as F

    from kexue.torch import GradientAccumulation, activation_bytes

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = convnet().to(device)
    opt = GradientAccumulation(torch.optim.Adam(model.parameters(), 1e-3), n)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randn(batch, 3, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    m, saved = batch // n, 0
    with peak_rss_growth() as cpu:  # on CUDA, the allocator's own peak counter is used instead
        for k in range(n):
            out, saved = activation_bytes(lambda: model(x[k * m:(k + 1) * m]), exclude=[*model.parameters(), x])
            F.mse_loss(out, y[k * m:(k + 1) * m]).backward()
            opt.step()
            opt.zero_grad()
    peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else cpu["peak"]
    return {"n": n, "activations": saved, "peak": peak, "device": device}


def in_subprocess(args: list[str], env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--child", choices=["keras", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "keras":
        print(json.dumps(keras_times(args.repeats)))
        return
    if args.child == "memory":
        print(json.dumps(memory_of_one_update(args.n, args.batch)))
        return

    import keras
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"torch {torch.__version__}, keras {keras.__version__}\n")
    print("| comparison | ours (ms / micro-batch) | alternative (ms / micro-batch) | ratio ours / alternative |")
    print("|---|---|---|---|")
    for backend in ("tensorflow", "torch"):
        r = in_subprocess(["--child", "keras", "--repeats", str(args.repeats)], {"KERAS_BACKEND": backend})
        print(f"| Keras ({r['backend']} backend): kexue wrapper vs built-in `gradient_accumulation_steps` | "
              f"{1e3 * r['kexue']:.3f} | {1e3 * r['keras']:.3f} | {r['kexue'] / r['keras']:.3f} |")
    r = torch_times(args.repeats)
    print(f"| torch ({r['device']}): kexue wrapper vs hand-written loop | {1e3 * r['kexue']:.3f} | "
          f"{1e3 * r['hand-written']:.3f} | {r['kexue'] / r['hand-written']:.3f} |")

    print(f"\nMemory of one update of {args.batch} examples (small CNN, Adam), each n in a fresh process:\n")
    print("| n | micro-batch | activations saved (MiB) | measured peak growth (MiB) | peak vs n = 1 |")
    print("|---|---|---|---|---|")
    first = None
    for n in (1, 2, 4, 8, 16):
        r = in_subprocess(["--child", "memory", "--n", str(n), "--batch", str(args.batch)])
        first = first or r["peak"]
        what = "CUDA allocator" if r["device"] == "cuda" else "process RSS"
        print(f"| {n} | {args.batch // n} | {r['activations'] / 2**20:.1f} | {r['peak'] / 2**20:.1f} ({what}) | "
              f"{r['peak'] / first:.2f} |")


if __name__ == "__main__":
    main()
