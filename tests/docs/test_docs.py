"""The generated parts of README.md and docs/ are current (``scripts/make_docs.py --check``), the check notices a
stale or missing block, and the links between the pages lead to files that exist."""

import re
import shutil

import pytest

from scripts import make_docs
from tests.conftest import REPO

#: pages other engineers are writing; drop a name once its file is committed, so that links to it are checked
PENDING_PAGES = {"docs/publishing.md", "docs/speed_threads.md"}


def test_every_generated_part_is_current(capsys):
    assert make_docs.main(["--check"]) == 0, capsys.readouterr().out


def test_the_check_names_a_stale_block_and_a_missing_marker(tmp_path):
    for path in {b.path for b in make_docs.BLOCKS}:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    for path, (_, current, _) in make_docs.generate(tmp_path).items():  # every block current in the copy
        path.write_text(current)
    speed = tmp_path / "docs" / "speed.md"
    speed.write_text(speed.read_text().replace("| 6.11 s |", "| 9.99 s |"))
    stale = [b.name for _, _, blocks in make_docs.generate(tmp_path).values() for b in blocks]
    assert stale == ["teacher-cache-table"]
    speed.write_text(speed.read_text().replace("<!-- speed-options:end -->", ""))
    with pytest.raises(ValueError, match="speed.md lacks the markers <!-- speed-options:start -->"):
        make_docs.generate(tmp_path)


def test_links_between_the_pages_lead_to_files():
    pages = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path = (page.parent / target).resolve()
            if not path.exists() and str(path.relative_to(REPO)) not in PENDING_PAGES:
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
