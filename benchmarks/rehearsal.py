"""The full-scale rehearsal: every chapter's full configuration run on the CPU, with its time and peak memory.

Each chapter is executed by nbval in its own process with ``KEXUE_SCALE=full KEXUE_REHEARSAL=1``: the
full configuration's code paths, dataset-wide passes at full size, labelled stand-ins where the real
MNIST/CIFAR-10 files are absent, training loops cut to a few steps (see :mod:`kexue.scale`). The peak
resident memory of the largest process of the tree (``wait4``'s ``ru_maxrss`` over the waited-for
processes: the notebook's kernel, whose memory is where the model and data live; worker processes are
not added to it) is compared with a limit of 12 GB: a T4 has 16 GB, a Colab T4 runtime about 12.7 GB of
host memory. On the CPU the model, the data and every activation live in that one address space, so a
peak below the limit bounds what the GPU must hold as well. What a CPU run cannot see: the CUDA
context, cuDNN workspaces, and TensorFlow's habit of reserving most of a GPU (the Keras chapters set
``TF_FORCE_GPU_ALLOW_GROWTH`` so that torch keeps its share).

    bash .ci/rehearse                 # every chapter (runs this script with the environment set)
    bash .ci/rehearse 04 08           # some chapters, by number

Prints a Markdown table (chapter, result, wall time, peak memory) and exits non-zero if a chapter failed
or went over ``--limit-gb`` (default 12).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_GB = 12.0  # a T4: 16 GB on the card, about 12.7 GB of host memory on Colab


def run_chapter(notebook: Path, timeout: int, cache: Path) -> tuple[int, float, float, str]:
    """Execute ``notebook`` under nbval in a child process: (exit code, seconds, peak GiB, output tail)."""
    env = {**os.environ, "KEXUE_SCALE": "full", "KEXUE_REHEARSAL": "1", "KEXUE_PROGRESS": "0",
           "KEXUE_NB_CACHE": str(cache)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.executed_cache",
               "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={timeout}", str(notebook)]
    start = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as log:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        log.seek(0)
        tail = log.read()[-3000:]
    return child.returncode, seconds, usage.ru_maxrss / 2**20, tail  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chapters", nargs="*", help="chapter numbers (01 .. 08); default: all")
    parser.add_argument("--limit-gb", type=float, default=LIMIT_GB, help="peak memory allowed (default 12)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        wanted = {c.zfill(2) for c in args.chapters}
        unknown = wanted - {nb.name[:2] for nb in notebooks}
        if unknown:
            parser.error(f"no chapter numbered {', '.join(sorted(unknown))}")
        notebooks = [nb for nb in notebooks if nb.name[:2] in wanted]
    rows, failed = [], False
    print(f"full-scale rehearsal on {os.cpu_count()} CPU cores, limit {args.limit_gb:g} GB", flush=True)
    with tempfile.TemporaryDirectory() as cache:
        for notebook in notebooks:
            code, seconds, peak, tail = run_chapter(notebook, args.timeout, Path(cache))
            over = peak * 2**30 / 1e9 > args.limit_gb
            result = "failed" if code else ("over the limit" if over else "passed")
            failed |= bool(code) or over
            rows.append(f"| {notebook.stem} | {result} | {seconds:.0f} s | {peak * 2**30 / 1e9:.2f} GB |")
            print(rows[-1], flush=True)
            if code:
                print(tail, file=sys.stderr, flush=True)
    print("\n| chapter | rehearsal | wall time | peak memory |\n|---|---|---|---|")
    print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
