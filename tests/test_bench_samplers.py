"""bench.samplers' real-task summary: the ranking rule of issue #16 and the paired sign tests."""

from __future__ import annotations

import pytest

from bench.samplers import _sign_test, task_markdown, task_ranking


def _run(sampler: str, seed: int, at20: float | None, at40: float | None) -> dict:
    checkpoints = {}
    for t, gain in (("20", at20), ("40", at40)):
        checkpoints[t] = {"error": "no model"} if gain is None else {"heldout": {"paper": {"mean": gain}}}
    return {"sampler": sampler, "seed": seed, "checkpoints": checkpoints}


def _results(table: dict[str, list[tuple[float | None, float | None]]]) -> list[dict]:
    return [_run(s, seed, *cells) for s, rows in table.items() for seed, cells in enumerate(rows)]


def test_the_median_after_the_last_checkpoint_ranks_first():
    results = _results(
        {
            "botorch": [(0.5, 0.0), (0.5, 0.1), (0.5, 0.2)],  # best at 20, median 0.1 at 40
            "tpe": [(0.0, 0.3), (0.0, -0.5), (0.0, 0.2)],  # median 0.2 at 40
            "random": [(0.1, 0.15), (0.1, 0.15), (0.1, -1.0)],  # median 0.15 at 40
        }
    )
    assert task_ranking(results, (20, 40)) == ["tpe", "random", "botorch"]


def test_medians_equal_to_three_decimals_are_tied_and_broken_by_the_first_checkpoint_then_the_mean():
    results = _results(
        {
            "gp": [(0.0, 0.1001), (0.0, 0.1001), (0.0, 0.1001)],
            "botorch": [(0.2, 0.1), (0.2, 0.1), (0.2, 0.1)],  # 0.1 vs 0.1001: tied; ahead at 20
            "random": [(0.2, 0.1), (0.2, 0.1), (0.3, 0.1)],  # tied at 40 and 20 with botorch; higher mean
        }
    )
    assert task_ranking(results, (20, 40)) == ["random", "botorch", "gp"]


def test_a_sampler_without_a_recommendation_ranks_last():
    results = _results({"botorch": [(0.1, None), (0.1, None)], "random": [(-0.5, -0.5), (-0.5, -0.5)]})
    assert task_ranking(results, (20, 40)) == ["random", "botorch"]


@pytest.mark.parametrize(
    ("wins", "losses", "p"), [(10, 0, 2 / 1024), (9, 1, 22 / 1024), (4, 1, 12 / 32), (3, 2, 1.0), (0, 0, 1.0)]
)
def test_sign_test_is_the_exact_two_sided_binomial(wins, losses, p):
    assert _sign_test(wins, losses) == pytest.approx(p)
    assert _sign_test(losses, wins) == pytest.approx(p)


def test_markdown_reports_medians_the_ranking_and_paired_seeds():
    results = _results({"botorch": [(0.1, 0.2), (0.0, -0.1)], "gp": [(0.3, 0.3), (-0.2, 0.0)]})
    text = task_markdown(results, (20, 40))
    assert "| botorch | 40 | +0.050 | +0.200, -0.100 |" in text
    assert "| gp | 20 | +0.050 | +0.300, -0.200 |" in text
    assert "Ranking (median gain after 40 trials, ties by 20): gp > botorch" in text
    assert "After 40 trials, paired per seed against botorch: gp ahead on 2/2 (sign test p = 0.5)" in text
    assert "After 20 trials, paired per seed against botorch: gp ahead on 1/2 (sign test p = 1)" in text
