"""Chapter 03 benchmark: the EMA callback's cost, and the seeded PyDataset's throughput.

1. Training-step time of chapter 1's Keras MLP (256-512-512-10, batch 32, SGD) through ``model.fit`` with no
   averaging, with Keras's built-in ``use_ema=True``, and with ``kexue.keras.ExponentialMovingAverage`` (aim:
   within 1.2x of the built-in), on the tensorflow and torch backends (one process each).
2. Examples per second that ``model.fit`` receives from ``kexue.keras.SeededPyDataset`` (10,000 images of 28x28,
   random shift and pixel noise) with 1 and 4 workers, threads and processes, against a plain loop that builds
   the same batches in the main thread, and against ``fit`` on in-memory arrays without augmentation.

3. What ``record`` costs when no capture is open: forward time of ``kexue.torch.SelfAttention`` (which marks its
   attention matrix with ``record``) against the same module without the ``record`` call, batch 8 x 32 x 64, and
   the time of one bare ``record`` call.

Contenders alternate; ratios of medians. Run from the repository root: ``python benchmarks/keras_cooler.py``.
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
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from common import keras_mlp_workload  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def ema_times(repeats: int) -> dict:
    import keras

    from kexue.keras import ExponentialMovingAverage

    contenders = {
        "none": (keras_mlp_workload(keras.optimizers.SGD(0.01)), []),
        "use_ema": (keras_mlp_workload(keras.optimizers.SGD(0.01, use_ema=True, ema_momentum=0.999)), []),
        "callback": (keras_mlp_workload(keras.optimizers.SGD(0.01)), [ExponentialMovingAverage(0.999)]),
    }
    for (model, x, y), callbacks in contenders.values():  # warm-up: tracing, variable creation
        model.fit(x[:256], y[:256], batch_size=32, verbose=0, callbacks=callbacks)
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, ((model, x, y), callbacks) in contenders.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=32, shuffle=False, verbose=0, callbacks=callbacks)
            times[name].append((time.perf_counter() - start) / (len(x) // 32))
    return {"backend": keras.backend.backend(), **{k: statistics.median(v) for k, v in times.items()}}


def shift_and_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Module-level (so worker processes can unpickle it): shift by up to 2 pixels, add pixel noise."""
    shifted = np.roll(image, rng.integers(-2, 3, size=2), axis=(0, 1))
    return (shifted + 0.3 * rng.standard_normal(image.shape)).astype("float32")


def data_throughput(repeats: int) -> dict:
    import keras

    from kexue.keras import SeededPyDataset

    class NoOp(keras.Model):
        """Takes each batch and does nothing with it: what fit costs without a model."""

        def __init__(self) -> None:
            super().__init__()
            self.built = True

        def call(self, x):
            return x

        def train_step(self, data):
            return {"n": keras.ops.cast(keras.ops.shape(data[0])[0], "float32")}

    rng = np.random.default_rng(0)
    x, y = rng.random((10_000, 28, 28), dtype=np.float32), rng.integers(0, 10, 10_000)
    batch = 128

    def seeded(workers: int, processes: bool) -> SeededPyDataset:
        return SeededPyDataset(x, y, batch, augment=shift_and_noise, seed=0, workers=workers,
                               use_multiprocessing=processes, max_queue_size=16)

    def plain_loop() -> None:
        ds = seeded(1, False)
        for b in range(len(ds)):
            ds[b]

    def fit_on(data) -> Callable[[], None]:
        def run() -> None:
            model = NoOp()
            model.compile()
            if isinstance(data, tuple):
                model.fit(*data, batch_size=batch, epochs=1, verbose=0, shuffle=False)
            else:
                model.fit(data, epochs=1, verbose=0, shuffle=False)
        return run

    contenders = {
        "plain loop, main thread": plain_loop,
        "fit on in-memory arrays (no augmentation)": fit_on((x, y)),
        **{f"fit on SeededPyDataset, {w} {'process' if p else 'thread'}{'es' if p and w > 1 else 's' if w > 1 else ''}":
           fit_on(seeded(w, p)) for w in (1, 4) for p in (False, True)},
    }
    for run in contenders.values():
        run()  # warm-up
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {"backend": keras.backend.backend(), "n": len(x),
            "times": {k: statistics.median(v) for k, v in times.items()}}


def record_cost(repeats: int) -> dict:
    import math

    import torch

    from kexue.capture import record
    from kexue.torch import SelfAttention

    class Unmarked(SelfAttention):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.ndim != 3:
                raise ValueError("expects (batch, length, features)")
            scores = self.query(x) @ self.key(x).transpose(1, 2) / math.sqrt(self.units)
            return torch.softmax(scores, dim=-1) @ self.value(x)

    torch.manual_seed(0)
    marked, plain = SelfAttention(64, 64), Unmarked(64, 64)
    plain.load_state_dict(marked.state_dict())
    x, calls = torch.randn(8, 32, 64), 200
    contenders = {"marked": marked, "unmarked": plain}
    times = {name: [] for name in contenders}
    with torch.no_grad():
        assert torch.equal(marked(x), plain(x))
        for _ in range(repeats):
            for name, module in contenders.items():
                start = time.perf_counter()
                for _ in range(calls):
                    module(x)
                times[name].append((time.perf_counter() - start) / calls)
    bare = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(10_000):
            record("a", x)
        bare.append((time.perf_counter() - start) / 10_000)
    return {**{k: statistics.median(v) for k, v in times.items()}, "record": statistics.median(bare)}


def child(kind: str, repeats: int, backend: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--repeats", str(repeats)],
                         capture_output=True, text=True, check=True, env={**os.environ, "KERAS_BACKEND": backend})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", choices=["ema", "data", "record"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "ema":
        print(json.dumps(ema_times(args.repeats)))
        return
    if args.child == "data":
        print(json.dumps(data_throughput(args.repeats)))
        return
    if args.child == "record":
        print(json.dumps(record_cost(args.repeats)))
        return
    import keras

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"keras {keras.__version__}\n")
    print("| backend | no averaging (ms / step) | use_ema (ms / step) | kexue callback (ms / step) "
          "| callback / use_ema | callback / none |")
    print("|---|---|---|---|---|---|")
    for backend in ("tensorflow", "torch"):
        r = child("ema", args.repeats, backend)
        print(f"| {r['backend']} | {1e3 * r['none']:.3f} | {1e3 * r['use_ema']:.3f} | {1e3 * r['callback']:.3f} | "
              f"{r['callback'] / r['use_ema']:.3f} | {r['callback'] / r['none']:.3f} |")
    r = child("data", max(3, args.repeats // 2), "tensorflow")
    base = r["times"]["plain loop, main thread"]
    print(f"\nOne epoch of {r['n']:,} images 28x28, batches of 128, {r['backend']} backend:\n")
    print("| pipeline | seconds / epoch | examples / s | vs plain loop |")
    print("|---|---|---|---|")
    for name, t in r["times"].items():
        print(f"| {name} | {t:.3f} | {r['n'] / t:,.0f} | {base / t:.2f}x |")
    r = child("record", args.repeats, "torch")
    print("\n| SelfAttention forward, torch, 8 x 32 x 64, no capture open | microseconds / call |")
    print("|---|---|")
    print(f"| without `record` | {1e6 * r['unmarked']:.1f} |")
    print(f"| with `record` | {1e6 * r['marked']:.1f} |")
    print(f"| ratio with / without | {r['marked'] / r['unmarked']:.3f} |")
    print(f"| one bare `record` call | {1e6 * r['record']:.2f} |")


if __name__ == "__main__":
    main()
