"""EMA warm-up: a short run must export mostly trained weights."""

import math

import pytest
from standins import RegressionTask, regression_settings

from diffma_cli.train.distributed import processes
from diffma_cli.train.ema import ema_decay_at, initialisation_share
from diffma_cli.train.loop import fit


def test_decay_follows_the_warm_up_then_the_setting():
    assert ema_decay_at(0.9999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.9999, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.95, 1000) == 0.95  # capped by the setting once the ramp passes it
    assert ema_decay_at(0.9999, 5, warmup=False) == 0.9999


def test_initialisation_share_matches_the_closed_forms():
    # Without warm-up the start keeps decay^n; with it, prod (1 + k) / (10 + k) = 9! n! / (n + 9)!.
    assert initialisation_share(0.9999, 600, warmup=False) == pytest.approx(0.9999**600, rel=1e-9)
    n = 100
    closed = math.factorial(9) * math.factorial(n) / math.factorial(n + 9)
    assert initialisation_share(0.9999, n) == pytest.approx(closed, rel=1e-6)
    assert closed < 1e-11


def _distance(a, b) -> float:
    pairs = zip(list(a) if isinstance(a, list) else a.parameters(), b.parameters(), strict=True)
    return sum((p - q).double().pow(2).sum() for p, q in pairs).sqrt().item()


@pytest.mark.parametrize("warmup", [True, False])
def test_exported_ema_after_100_steps_is_mostly_trained(tmp_path, capsys, warmup):
    task = RegressionTask()
    initial = [p.detach().clone() for p in task.model.parameters()]
    settings = regression_settings(epochs=0, steps=100, ema_decay=0.9999, ema_warmup=warmup, lr=1e-2)
    with processes("cpu") as where:
        result = fit(task, settings, tmp_path / "run", where, progress=False)
    moved, trained = _distance(initial, result.ema), _distance(initial, result.model)
    warning = capsys.readouterr().err
    if warmup:
        # The EMA lies near the trained weights (it averages the last steps), far from the start.
        assert _distance(result.ema, result.model) < 0.2 * trained
        assert moved > 0.8 * trained and "initialisation" not in warning
    else:
        # The released behaviour: 99 % of the average is still the initialisation, and the run says so.
        assert moved < 0.05 * trained
        assert "99% of the exported weights are still the initialisation" in warning
