"""Chapter 08 benchmark: the quantiser's nearest-code search against ``torch.cdist`` + ``argmin``.

65,536 vectors of dimension 64 against 1,024 codes (float32): ``kexue.torch.nearest_code`` (chunked
|e|^2 - 2 z.e, default chunk 4,096 rows) vs ``torch.cdist(z, codebook).argmin(1)``, which materialises the full
65,536 x 1,024 distance matrix (256 MiB). Times are medians of alternated repetitions in one process; peak
memory is measured for each contender in a fresh process (CUDA allocator peak on a GPU, sampled RSS growth on
CPU). Run from the repository root: ``python benchmarks/vq.py``.
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

import torch

from common import peak_rss_growth  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from kexue.torch import nearest_code  # noqa: E402

CONTENDERS = {
    "nearest_code": lambda z, e, chunk: nearest_code(z, e, chunk),
    "cdist+argmin": lambda z, e, chunk: torch.cdist(z, e).argmin(dim=1),
}


def problem(n: int, dim: int, codes: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, dim, generator=g).to(device), torch.randn(codes, dim, generator=g).to(device)


def child(name: str, n: int, dim: int, codes: int, chunk: int) -> dict:
    """In a fresh process: the peak extra memory of one call of ``name``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    z, e = problem(n, dim, codes, device)
    CONTENDERS[name](z, e, chunk)  # warm-up: kernels, thread pools
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with peak_rss_growth() as cpu:
        CONTENDERS[name](z, e, chunk)
        if device == "cuda":
            torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else cpu["peak"]
    return {"peak": peak, "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=65_536)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--codes", type=int, default=1_024)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1_024, 4_096, 16_384])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--child", choices=list(CONTENDERS))
    parser.add_argument("--chunk", type=int, default=4_096)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.dim, args.codes, args.chunk)))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"torch {torch.__version__}, device {device}; {args.n} x {args.dim} vectors, {args.codes} codes\n")
    z, e = problem(args.n, args.dim, args.codes, device)
    # ground truth in float64, where near-ties that float32 rounding can flip are resolved
    exact = torch.cat([torch.cdist(block.double(), e.double()).argmin(dim=1) for block in z.split(8_192)])
    cdist_agree = (CONTENDERS["cdist+argmin"](z, e, 0) == exact).float().mean().item()

    def memory(name: str, chunk: int) -> float:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--chunk", str(chunk), "--n", str(args.n),
                              "--dim", str(args.dim), "--codes", str(args.codes)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["peak"] / 2**20

    cdist_mib = memory("cdist+argmin", 0)
    print("| chunk rows | nearest_code (ms) | cdist + argmin (ms) | time ratio | peak MiB (ours) | peak MiB (cdist) "
          "| memory ratio | chunk scores (MiB) | float64 argmin matched (ours, cdist) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for chunk in args.chunks:
        times = {name: [] for name in CONTENDERS}
        for _ in range(args.repeats):  # alternate the contenders
            for name, fn in CONTENDERS.items():
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn(z, e, chunk)
                if device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
        agree = (nearest_code(z, e, chunk) == exact).float().mean().item()
        ours_ms, cdist_ms = (1e3 * statistics.median(times[k]) for k in CONTENDERS)
        ours_mib = memory("nearest_code", chunk)
        print(f"| {chunk} | {ours_ms:.1f} | {cdist_ms:.1f} | {ours_ms / cdist_ms:.2f} | {ours_mib:.1f} | "
              f"{cdist_mib:.1f} | {ours_mib / cdist_mib:.2f} | {chunk * args.codes * 4 / 2**20:.0f} | {agree:.5f}, {cdist_agree:.5f} |")


if __name__ == "__main__":
    main()
