"""Specification of ``mpqjax report``: it regenerates a search folder's report; a folder that is not one exits 2."""

import json

from mpqjax import cli
from mpqjax.store.run_folder import FILES, FORMAT


def test_writes_the_report_of_a_search_folder(tmp_path, capsys):
    (tmp_path / FILES["search"]).write_text(json.dumps({"format": FORMAT, "status": "running", "settings": {}}))
    assert cli.main(["report", str(tmp_path)]) == 0
    assert FILES["report"] in capsys.readouterr().out and (tmp_path / FILES["report"]).is_file()


def test_a_folder_that_is_not_a_search_exits_2_with_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("mpqjax report: error:") and "not" in error[0]
