"""The report: failed trials and their reasons, guarded comparisons (markdown, JSON)."""

from optimize.report import StudyReport


def test_failed_trials_are_listed_with_their_reason():
    report = StudyReport(
        study_name="s",
        objective_names=("pickscore",),
        directions=("maximize",),
        states={"COMPLETE": 2, "FAIL": 1},
        best=(),
        recommendation=None,
        failures=((3, "OutOfMemoryError: simulated | CUDA"),),
    )
    md = report.to_markdown()
    assert "## Failed trials" in md and "| 3 | OutOfMemoryError: simulated / CUDA |" in md
    assert report.to_dict()["failures"] == [{"trial": 3, "reason": "OutOfMemoryError: simulated | CUDA"}]
    assert "Failed trials" not in StudyReport("s", ("a",), ("maximize",), {"COMPLETE": 1}, (), None).to_markdown()


def test_a_guarded_report_shows_the_guard_comparison_with_its_verdict():
    from fabric.params import FabricParams
    from optimize.recommend import Candidate, Comparison, Recommendation

    best = Candidate(4, {}, FabricParams(), observed=0.3, posterior_mean=0.28)

    def comparison(reference: str, quantity: str, low: float, high: float) -> Comparison:
        return Comparison(reference, "validation", (low, high), (low + high) / 2, low, high, 0.95, quantity=quantity)

    rec = Recommendation(
        best,
        best,
        (best,),
        "posterior_mean",
        comparisons=(comparison("paper", "value", 0.1, 0.3),),
        guard_comparisons=(comparison("paper", "guard", -0.02, 0.04), comparison("a1111", "guard", -0.3, -0.1)),
    )
    config = {
        "guard": "mean final-round toy-adherence may fall at most 0 below the paper run's",
        "guard_objective": "toy-adherence",
    }
    report = StudyReport("s", ("toy-taste",), ("maximize",), {"COMPLETE": 5}, (), rec, config=config)
    md = report.to_markdown()
    assert "## Held-out guard: toy-adherence" in md
    assert "| paper | +0.01 | [-0.02, +0.04] (95%) | no difference shown |" in md
    assert "| a1111 | -0.2 | [-0.3, -0.1] (95%) | worse |" in md
    guards = report.to_dict()["recommendation"]["guard_comparisons"]
    assert [(g["reference"], g["quantity"], g["verdict"]) for g in guards] == [
        ("paper", "guard", "no difference shown"),
        ("a1111", "guard", "worse"),
    ]
