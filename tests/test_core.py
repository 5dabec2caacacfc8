"""kexue's shared helpers: scale, seeding, device, progress bars, plot style, argument checks."""

import random

import numpy as np
import pytest
import torch

import kexue
from kexue import plot
from kexue._checks import finite_real, one_of, positive_int
from kexue.progress_bar import progress, progress_enabled


@pytest.mark.parametrize("value", ["quick", "full", " FULL "])
def test_scale_reads_the_environment(monkeypatch, value):
    monkeypatch.setenv("KEXUE_SCALE", value)
    assert kexue.scale() == value.strip().lower()
    assert kexue.pick(quick=1, full=2) == (1 if value.strip().lower() == "quick" else 2)


def test_scale_defaults_to_the_hardware(monkeypatch):
    monkeypatch.delenv("KEXUE_SCALE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert kexue.scale() == "full"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kexue.scale() == "quick"


def test_bad_scale_is_named(monkeypatch):
    monkeypatch.setenv("KEXUE_SCALE", "medium")
    with pytest.raises(ValueError, match="KEXUE_SCALE.*'quick', 'full'.*'medium'"):
        kexue.scale()


def test_seed_everything_repeats_every_generator():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    kexue.seed_everything(7)
    first = draw()
    kexue.seed_everything(7)
    assert draw() == first
    kexue.seed_everything(8)
    assert draw() != first


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError)])
def test_seed_everything_rejects_bad_seeds(bad, error):
    with pytest.raises(error, match="seed"):
        kexue.seed_everything(bad)


def test_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kexue.device() == torch.device("cpu")
    assert kexue.device("cpu") == torch.device("cpu")
    with pytest.raises(TypeError, match="name"):
        kexue.device(0)


def test_progress_is_off_headless_and_on_when_asked(monkeypatch):
    monkeypatch.setenv("KEXUE_PROGRESS", "0")
    assert not progress_enabled()
    items = [1, 2, 3]
    assert progress(items) is items
    monkeypatch.setenv("KEXUE_PROGRESS", "1")
    assert progress_enabled()
    bar = progress(items, disable=True)
    assert list(bar) == items and bar is not items


def test_checks_name_the_argument():
    assert positive_int("steps", 3) == 3
    assert positive_int("n", np.int64(4)) == 4
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1, got 0"):
        positive_int("steps", 0)
    with pytest.raises(TypeError, match="`steps`.*float"):
        positive_int("steps", 2.0)
    with pytest.raises(ValueError, match="`kind` must be one of 'a', 'b'; got 'c'"):
        one_of("kind", "c", ("a", "b"))
    assert finite_real("gamma", 0) == 0.0 and finite_real("scale", np.float32(1.5), minimum=1.0) == 1.5
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="`gamma` must be a finite real number >= 0"):
            finite_real("gamma", bad)
    with pytest.raises(ValueError, match="`lr` must be a finite real number > 0, got 0"):
        finite_real("lr", 0, inclusive=False)
    for bad in (True, "1", None):
        with pytest.raises(TypeError, match="`gamma`"):
            finite_real("gamma", bad)


def test_plot_style_applies_the_palette():
    import matplotlib as mpl

    plot.use_style()
    assert mpl.rcParams["axes.prop_cycle"].by_key()["color"][0] == plot.PALETTE[0]
    plot.use_style(**{"figure.dpi": 77})
    assert mpl.rcParams["figure.dpi"] == 77


def test_image_grid_tiles_with_padding():
    import numpy as np

    tiles = np.arange(6 * 2 * 3, dtype=float).reshape(6, 2, 3)
    grid = plot.image_grid(tiles, 2, 3, pad=1, fill=-1)
    assert grid.shape == (2 * 2 + 1, 3 * 3 + 2)
    assert np.array_equal(grid[3:5, 4:7], tiles[4]) and (grid[2] == -1).all()
    with pytest.raises(ValueError, match="images"):
        plot.image_grid(tiles, 2, 2)


def test_rehearsal_implies_full_scale_and_cuts_only_training_loops(monkeypatch):
    monkeypatch.delenv("KEXUE_SCALE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("KEXUE_REHEARSAL", "1")
    assert kexue.rehearsal() and kexue.scale() == "full"
    assert kexue.pick(quick=300, full=3_000, rehearsal=2) == 2  # a training loop
    assert kexue.pick(quick=2_000, full=60_000) == 60_000  # a dataset-wide pass keeps its full size
    monkeypatch.setenv("KEXUE_REHEARSAL", "0")
    assert not kexue.rehearsal() and kexue.scale() == "quick"
    assert kexue.pick(quick=300, full=3_000, rehearsal=2) == 300
    monkeypatch.setenv("KEXUE_SCALE", "full")
    assert kexue.pick(quick=300, full=3_000, rehearsal=2) == 3_000


def test_rehearsal_refuses_quick_scale_and_bad_values(monkeypatch):
    monkeypatch.setenv("KEXUE_REHEARSAL", "1")
    monkeypatch.setenv("KEXUE_SCALE", "quick")
    with pytest.raises(ValueError, match="rehearses full scale"):
        kexue.scale()
    monkeypatch.setenv("KEXUE_REHEARSAL", "maybe")
    with pytest.raises(ValueError, match="KEXUE_REHEARSAL.*'maybe'"):
        kexue.rehearsal()
