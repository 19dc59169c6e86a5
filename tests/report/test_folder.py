"""Specification of mpqjax.report.folder: `write` regenerates a search folder's derived files, atomically."""

import csv
import os

import pytest

from mpqjax import report


def test_write_of_a_finished_search(finished):
    folder, _, written = finished
    assert written == [os.path.join(folder, name) for name in ("trials.csv", "pareto.png", "hessian.png",
                                                               "report.md")]
    assert not [name for name in os.listdir(folder) if name.startswith(".tmp-")]
    with open(os.path.join(folder, "report.md")) as handle:
        assert handle.read() == report.markdown(report.load_run(folder))


def test_write_of_a_running_search_with_an_interrupted_last_line(run_folders, tmp_path):
    run_folders.write(tmp_path, status="running", trials=run_folders.make_trials(14), best=False, baseline=False)
    with open(tmp_path / "trials.jsonl", "ab") as handle:
        handle.write(b'{"trial": 14, ')
    written = report.write(tmp_path)
    assert [os.path.basename(p) for p in written] == ["trials.csv", "pareto.png", "hessian.png", "report.md"]
    assert "best_config.json" not in os.listdir(tmp_path)
    assert "**Search running**" in (tmp_path / "report.md").read_text()
    with open(tmp_path / "trials.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 14


def test_write_of_a_search_with_only_failed_trials_or_none_yet(run_folders, tmp_path):
    only_failed = [run_folders.trial_record(t, [4, 4, 4], [1.0] * 3, failed=True) for t in range(3)]
    for folder, trials in ((tmp_path / "failed", only_failed), (tmp_path / "empty", [])):
        run_folders.write(folder, status="running", trials=trials, best=False, baseline=False, hessian=False)
        written = report.write(folder)
        assert [os.path.basename(p) for p in written] == ["trials.csv", "pareto.png", "report.md"]
        with open(folder / "pareto.png", "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        text = (folder / "report.md").read_text()
        assert "No successful feasible trial yet." in text and "## Pareto front" not in text


@pytest.mark.parametrize(
    "content, problem",
    [(None, "no search.json"), ("{not json", "search.json is not valid JSON"), ('[1, 2]', 'no "format"'),
     ('{"format": "something-else/1"}', 'no "format"')],
)
def test_a_folder_without_a_readable_search_json_is_refused_in_one_line(tmp_path, content, problem):
    if content is not None:
        (tmp_path / "search.json").write_text(content)
    with pytest.raises(ValueError) as error:
        report.write(tmp_path)
    message = str(error.value)
    assert message == f"{str(tmp_path)!r} is not an mpqjax search folder ({problem})" or (
        problem == 'no "format"' and message.startswith(f"{str(tmp_path)!r} is not an mpqjax search folder (search"))
    assert "\n" not in message
    assert sorted(os.listdir(tmp_path)) == ([] if content is None else ["search.json"])  # nothing written
