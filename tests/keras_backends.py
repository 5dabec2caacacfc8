"""A Keras process has one backend: re-run a Keras test module under the other one in a fresh process."""

import os
import subprocess
import sys

import pytest

RERUN = "KEXUE_OTHER_BACKEND_RUN"
only_once = pytest.mark.skipif(os.environ.get(RERUN) == "1", reason="already the re-run under the other backend")


def rerun_under_other_backend(test_file: str, backend: str) -> None:
    """Run ``test_file`` with pytest under the Keras backend that is not ``backend``; fail if anything fails."""
    other = "torch" if backend == "tensorflow" else "tensorflow"
    env = dict(os.environ, KERAS_BACKEND=other, **{RERUN: "1"})
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
