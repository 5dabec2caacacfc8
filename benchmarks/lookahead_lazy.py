"""Chapter 02 benchmark: lazy Adam and Lookahead against what a user would pick instead.

1. kexue.torch.LazyAdam on sparse gradients of a 1,000,000 x 64 embedding, batches of 1,024 Zipf(1.1) ids,
   against dense torch.optim.Adam (aim: at least 10x faster per step) and torch.optim.SparseAdam (aim:
   within 1.5x);
2. kexue.torch.Lookahead's step-time overhead over its inner optimizer (aim: at most 1.15x), on the MLP
   of chapter 1's benchmark, and kexue.keras.Lookahead's over the bare Keras optimizer in model.fit;
3. kexue.keras.LazyOptimizer(Adam) against Keras's dense Adam on the same table, on both Keras backends,
   each fed the gradient a Keras Embedding produces there (tensorflow: IndexedSlices; torch: a dense
   tensor); aim: faster than dense Adam on both, at least 10x on tensorflow.

Contenders alternate, repeated; the ratio of the medians is reported. Run from the repository root:
``python benchmarks/lookahead_lazy.py``.
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

from common import keras_mlp_workload  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def embedding_times(vocab: int, repeats: int) -> dict:
    import numpy as np
    import torch
    from torch import nn

    from kexue.torch import LazyAdam

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ids = torch.from_numpy((np.random.default_rng(0).zipf(1.1, size=(64, 1024)) - 1) % vocab).to(device)
    setups = {}
    for name, sparse, make in (
        ("dense Adam", False, lambda p: torch.optim.Adam(p, lr=1e-3)),
        ("SparseAdam", True, lambda p: torch.optim.SparseAdam(p, lr=1e-3)),
        ("kexue LazyAdam", True, lambda p: LazyAdam(p, lr=1e-3)),
    ):
        torch.manual_seed(0)
        emb = nn.Embedding(vocab, 64, sparse=sparse).to(device)
        setups[name] = (emb, make(emb.parameters()))
    times = {name: [] for name in setups}
    for r in range(repeats + 2):
        for name, (emb, opt) in setups.items():
            batch = ids[r % len(ids)]
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            emb(batch).square().mean().backward()
            opt.step()
            opt.zero_grad()
            if device == "cuda":
                torch.cuda.synchronize()
            if r >= 2:  # the first two steps allocate the optimizer state
                times[name].append(time.perf_counter() - start)
    return {"device": device, **{k: statistics.median(v) for k, v in times.items()}}


def torch_lookahead_times(repeats: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from kexue.torch import Lookahead

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, y = torch.randn(4096, 256, device=device), torch.randint(0, 10, (4096,), device=device)
    setups = {}
    for name, wrap in (("Adam", False), ("Lookahead(Adam)", True)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).to(device)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        setups[name] = (model, Lookahead(opt) if wrap else opt)
    times = {name: [] for name in setups}
    for r in range(repeats + 1):
        for name, (model, opt) in setups.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for k in range(0, len(x), 32):
                F.cross_entropy(model(x[k:k + 32]), y[k:k + 32]).backward()
                opt.step()
                opt.zero_grad()
            if device == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append((time.perf_counter() - start) / (len(x) // 32))
    return {"device": device, **{k: statistics.median(v) for k, v in times.items()}}


def keras_lookahead_times(repeats: int) -> dict:
    import keras

    from kexue.keras import Lookahead

    plain, x, y = keras_mlp_workload(keras.optimizers.Adam(1e-3))
    wrapped, _, _ = keras_mlp_workload(Lookahead(keras.optimizers.Adam(1e-3)))
    contenders = {"Adam": plain, "Lookahead(Adam)": wrapped}
    for m in contenders.values():
        m.fit(x[:256], y[:256], batch_size=32, verbose=0)
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, m in contenders.items():
            start = time.perf_counter()
            m.fit(x, y, batch_size=32, shuffle=False, verbose=0)
            times[name].append((time.perf_counter() - start) / (len(x) // 32))
    return {"backend": keras.backend.backend(), **{k: statistics.median(v) for k, v in times.items()}}


def one_row(table) -> None:
    """Read one row of a Keras variable back to the host, without reading the whole table.

    ``table[0]`` would convert the variable to a dense tensor first; on tensorflow, once a variable has been
    scattered into, every dense read copies it (copy-on-read), which cost about 37 ms for a 1M x 64 table
    here and would be charged to whichever contender scatters.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        table.value.sparse_read([0]).numpy()
    else:
        table.value[0].cpu()


def keras_lazy_times(vocab: int, repeats: int) -> dict:
    """Per-step time of ``opt.apply`` on the gradient an Embedding produces on this backend.

    On tensorflow that is an ``IndexedSlices`` (one row per looked-up id, duplicates included); on
    torch a dense tensor of the table's shape. Both optimizers get the same gradient.
    """
    import keras
    import numpy as np

    from kexue.keras import LazyOptimizer

    ids = (np.random.default_rng(0).zipf(1.1, size=(16, 1024)) - 1) % vocab
    setups = {}
    for name, make in (("Adam", lambda: keras.optimizers.Adam(1e-3)),
                       ("LazyOptimizer(Adam)", lambda: LazyOptimizer(keras.optimizers.Adam(1e-3)))):
        setups[name] = (keras.Variable(np.zeros((vocab, 64), "float32"), name="embeddings"), make())

    def embedding_gradient(batch):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            return tf.IndexedSlices(tf.ones((len(batch), 64)), tf.constant(batch), tf.constant([vocab, 64]))
        import torch

        grad = torch.zeros(vocab, 64, device=keras.ops.convert_to_tensor(0.0).device)
        grad.index_add_(0, torch.as_tensor(batch, device=grad.device), torch.ones(len(batch), 64, device=grad.device))
        return grad

    times = {name: [] for name in setups}
    for r in range(repeats + 2):
        g = embedding_gradient(ids[r % len(ids)])
        for name, (table, opt) in setups.items():
            start = time.perf_counter()
            opt.apply([g], [table])
            one_row(table)  # wait for the update
            if r >= 2:
                times[name].append(time.perf_counter() - start)
    return {"backend": keras.backend.backend(), **{k: statistics.median(v) for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--vocab", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["keras", "keras-lazy"], help=argparse.SUPPRESS)
    parser.add_argument("--only-keras-lazy", action="store_true", help="run part 3 only")
    args = parser.parse_args()
    if args.child == "keras":
        print(json.dumps(keras_lookahead_times(max(3, args.repeats // 3))))
        return
    if args.child == "keras-lazy":
        print(json.dumps(keras_lazy_times(args.vocab, args.repeats)))
        return
    if args.only_keras_lazy:
        keras_lazy_table(args)
        return

    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"torch {torch.__version__}\n")
    r = embedding_times(args.vocab, args.repeats)
    print(f"Embedding {args.vocab:,} x 64, batches of 1,024 Zipf(1.1) ids, {r['device']}, ms per step:\n")
    print("| optimizer | ms / step | kexue LazyAdam is faster by |")
    print("|---|---|---|")
    for name in ("dense Adam", "SparseAdam", "kexue LazyAdam"):
        print(f"| {name} | {1e3 * r[name]:.2f} | {r[name] / r['kexue LazyAdam']:.2f}x |")
    print("\n| Lookahead overhead | inner alone (ms / step) | with Lookahead (ms / step) | ratio |")
    print("|---|---|---|---|")
    r = torch_lookahead_times(max(3, args.repeats // 3))
    print(f"| torch ({r['device']}), MLP 256-512-512-10, batch 32 | {1e3 * r['Adam']:.3f} | "
          f"{1e3 * r['Lookahead(Adam)']:.3f} | {r['Lookahead(Adam)'] / r['Adam']:.3f} |")
    for backend in ("tensorflow", "torch"):
        out = subprocess.run([sys.executable, __file__, "--child", "keras", "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True, env={**os.environ, "KERAS_BACKEND": backend})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| Keras ({r['backend']} backend), same MLP in model.fit | {1e3 * r['Adam']:.3f} | "
              f"{1e3 * r['Lookahead(Adam)']:.3f} | {r['Lookahead(Adam)'] / r['Adam']:.3f} |")
    keras_lazy_table(args)


def keras_lazy_table(args: argparse.Namespace) -> None:
    print(f"\n| Keras, embedding {args.vocab:,} x 64, one batch of 1,024 ids | Adam (ms / step) | "
          "LazyOptimizer(Adam) (ms / step) | dense / lazy |")
    print("|---|---|---|---|")
    for backend in ("tensorflow", "torch"):
        out = subprocess.run([sys.executable, __file__, "--child", "keras-lazy", "--repeats", str(args.repeats),
                              "--vocab", str(args.vocab)],
                             capture_output=True, text=True, check=True, env={**os.environ, "KERAS_BACKEND": backend})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        fed = "IndexedSlices gradient" if r["backend"] == "tensorflow" else "dense gradient"
        print(f"| {r['backend']} backend, `opt.apply`, {fed} | {1e3 * r['Adam']:.1f} | "
              f"{1e3 * r['LazyOptimizer(Adam)']:.1f} | {r['Adam'] / r['LazyOptimizer(Adam)']:.2f}x |")


if __name__ == "__main__":
    main()
