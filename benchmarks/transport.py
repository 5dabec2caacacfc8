"""Chapter 05 benchmark: exact W1 by our LP against POT's network simplex, and Sinkhorn against POT's.

For n points against n points in 2-D (Euclidean cost): ``kexue.transport.wasserstein_primal`` (SciPy HiGHS) vs
``ot.emd2``, and ``kexue.transport.sinkhorn`` vs ``ot.sinkhorn2`` at the same regularisation (5% of the median
cost) and the same stopping tolerance, so at equal accuracy (both values are printed). Medians of repetitions (the
two Sinkhorns alternated). Run from the repository root: ``python benchmarks/transport.py [--lp-max 500]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import ot  # noqa: E402

from kexue.transport import sinkhorn, wasserstein_primal  # noqa: E402


def timed(fn, repeats):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000, 2000])
    parser.add_argument("--lp-max", type=int, default=500, help="largest n for our LP (n = 1000 takes over 500 s)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, POT {ot.__version__}\n")
    print("| n | our LP (s) | ot.emd2 (s) | LP / emd2 | our Sinkhorn (s) | ot.sinkhorn2 (s) | ours / POT | W1 exact | Sinkhorn value (ours, POT) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        rng = np.random.default_rng(n)
        x, y = rng.standard_normal((n, 2)), rng.standard_normal((n, 2)) + 1
        a = b = np.full(n, 1 / n)
        cost = ot.dist(x, y, metric="euclidean")
        reg = 0.05 * np.median(cost)
        repeats = 3 if n <= 500 else 1
        t_emd, exact = timed(lambda: ot.emd2(a, b, cost, numItermax=10_000_000), repeats)
        if n <= args.lp_max:
            t_lp, (ours_exact, _) = timed(lambda: wasserstein_primal(a, b, cost), repeats)
            assert abs(ours_exact - exact) < 1e-7 * exact
            lp_cells = f"{t_lp:.3f} | {t_emd:.3f} | {t_lp / t_emd:.1f}"
        else:
            lp_cells = f"not run | {t_emd:.3f} | -"
        times = {"ours": [], "pot": []}
        values = {}
        for _ in range(repeats + 2):  # alternate the two Sinkhorns
            t, values["ours"] = timed(lambda: sinkhorn(a, b, cost, reg, tol=1e-9)[0], 1)
            times["ours"].append(t)
            t, values["pot"] = timed(lambda: float(ot.sinkhorn2(a, b, cost, reg, stopThr=1e-9, numItermax=100_000)), 1)
            times["pot"].append(t)
        t_ours, t_pot = statistics.median(times["ours"]), statistics.median(times["pot"])
        print(f"| {n} | {lp_cells} | {t_ours:.3f} | {t_pot:.3f} | {t_ours / t_pot:.2f} | {exact:.5f} | "
              f"{values['ours']:.6f}, {values['pot']:.6f} |", flush=True)


if __name__ == "__main__":
    main()
