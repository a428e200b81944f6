"""Result files: one writer per folder, no writing through planted links, safe CSV cells."""

import pytest

from skuniad._outputs import OutputFolderBusy, folder_lock, open_output, spreadsheet_safe
from skuniad.errors import SkuniadError


def test_a_second_writer_of_a_locked_folder_is_refused_until_it_is_free(tmp_path):
    with folder_lock(tmp_path):
        with pytest.raises(OutputFolderBusy, match="another skuniad run is writing into"):
            with folder_lock(tmp_path):
                pass
    with folder_lock(tmp_path):  # released on exit
        pass
    assert issubclass(OutputFolderBusy, SkuniadError) and issubclass(OutputFolderBusy, OSError)


def test_a_planted_link_is_replaced_not_written_through(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    planted = tmp_path / "out" / "scores.csv"
    planted.parent.mkdir()
    planted.symlink_to(target)
    with open_output(planted) as f:
        f.write("rows")
    assert target.read_text() == "keep me"
    assert not planted.is_symlink() and planted.read_text() == "rows"


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://x","click")', '\'=HYPERLINK("http://x","click")'),
        ("+1", "'+1"),
        ("-cmd", "'-cmd"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("good/000.png", "good/000.png"),
        ("", ""),
    ],
)
def test_cells_a_spreadsheet_would_evaluate_are_quoted(cell, written):
    assert spreadsheet_safe(cell) == written
