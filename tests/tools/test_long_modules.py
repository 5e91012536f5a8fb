"""No module in matrix/ is longer than 350 lines, except the few `ALLOWED_MODULES` with why;
a stale entry (a module gone or back under the limit) fails too."""

from tools.long_modules import ALLOWED_MODULES, LIMIT, ROOT, main, problems, scan


def _write(path, lines: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"x{i} = {i}\n" for i in range(lines)), encoding="utf-8")
    return path


def test_a_module_one_line_over_the_limit_is_reported(tmp_path):
    _write(tmp_path / "pkg" / "at_limit.py", LIMIT)
    _write(tmp_path / "pkg" / "sub" / "over.py", LIMIT + 1)
    (found,) = scan([tmp_path / "pkg"], root=tmp_path)
    assert (found.path, found.lines) == ("pkg/sub/over.py", LIMIT + 1)
    (problem,) = problems([tmp_path / "pkg"], root=tmp_path, allowed={})
    assert problem.startswith("pkg/sub/over.py: 351 lines: split it")
    assert problems([tmp_path / "pkg"], root=tmp_path, allowed={"pkg/sub/over.py": "why"}) == []


def test_a_stale_allowed_entry_is_reported(tmp_path):
    _write(tmp_path / "pkg" / "short.py", LIMIT)
    allowed = {"pkg/short.py": "was long", "pkg/gone.py": "was split", "other/x.py": "elsewhere"}
    found = problems([tmp_path / "pkg"], root=tmp_path, allowed=allowed)
    # entries outside the scanned paths are not judged
    assert [p.split(":")[0] for p in found] == ["pkg/gone.py", "pkg/short.py"]
    assert all("stale ALLOWED_MODULES entry" in p for p in found)


def test_matrix_has_no_long_module_outside_the_allowed_list(capsys):
    assert problems([ROOT / "matrix"]) == []
    assert main(["--check"]) == 0
    capsys.readouterr()


def test_every_allowed_module_still_exists_and_is_still_long():
    paths = {m.path for m in scan([ROOT / "matrix"])}
    assert set(ALLOWED_MODULES) <= paths, f"stale entries: {sorted(set(ALLOWED_MODULES) - paths)}"
