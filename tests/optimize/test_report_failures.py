"""Failed trials and their reasons appear in the report (markdown, JSON)."""

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
