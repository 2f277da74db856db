"""docs/math.md stays true to the code, and the documentation points inside the repository.

1. Every code reference `path/file.py:name` in docs/math.md names a file that exists and defines
   `name` (a def or class at any nesting, or an assigned name or attribute); every test reference
   `tests/file.py::test_name[ids]` names a test function that exists (parametrize ids stripped).
2. Every estimator of rebar_np.estimators.ESTIMATORS is named in docs/math.md.
3. Every pointer of the form docs/math.md, section "Title" (or sections "A" to "B") in the package
   names a heading of docs/math.md.
4. The package and the docs cite nothing outside the repository (no "../shared", no "SPEC.md", no
   "SPEC section" style citation of an outside reference); README.md likewise, in its own test.
"""
import ast
import os
import re
import sys
from functools import lru_cache

import pytest

from rebar_np.estimators import ESTIMATORS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATH = os.path.join(ROOT, "docs", "math.md")

# `tests/test_x.py::test_name` or `tests/test_x.py::test_name[some-ids]`
TEST_REF = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.py)::(\w+)(?:\[[^\]\s`]*\])?")
# `rebar_np/model/sbn.py:hard_pass` (one colon, not two)
CODE_REF = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.py):(?!:)([A-Za-z_]\w*)")
# what the package and the docs must not cite
OUTSIDE = [re.compile(re.escape("../shared")), re.compile(re.escape("SPEC.md")), re.compile(r"\bSPEC\b")]


def math_text():
    with open(MATH, encoding="utf-8") as fh:
        return fh.read()


@lru_cache(maxsize=None)
def defined_names(path):
    """Names a Python file defines: def and class names at any nesting, assigned names and attributes
    (x = ..., self.x = ..., x: T = ..., dataclass fields), and imported names."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), filename=path)
    names = set()

    def targets(t):
        if isinstance(t, ast.Name):
            names.add(t.id)
        elif isinstance(t, ast.Attribute):
            names.add(t.attr)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                targets(e)

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                targets(t)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets(node.target)
    return names


@lru_cache(maxsize=None)
def defined_tests(path):
    """Names of the test functions (def test_*, at any nesting) of a test file."""
    return {n for n in defined_names(path) if n.startswith("test_")}


def references():
    text = math_text()
    tests = sorted({(m.group(1), m.group(2)) for m in TEST_REF.finditer(text)})
    code = sorted({(m.group(1), m.group(2)) for m in CODE_REF.finditer(text)})
    return code, tests


def test_code_references_exist():
    code, tests = references()
    # the page is written to name code and tests throughout; a parser that finds few has broken
    assert len(code) >= 50 and len(tests) >= 40, f"only {len(code)} code and {len(tests)} test references found"
    problems = []
    for path, name in code:
        if not os.path.isfile(os.path.join(ROOT, path)):
            problems.append(f"{path}:{name}: no such file")
        elif name not in defined_names(path):
            problems.append(f"{path}:{name}: {name} is not defined in {path}")
    for path, name in tests:
        if not path.startswith("tests/"):
            problems.append(f"{path}::{name}: test references live under tests/")
        elif not os.path.isfile(os.path.join(ROOT, path)):
            problems.append(f"{path}::{name}: no such file")
        elif name not in defined_tests(path):
            problems.append(f"{path}::{name}: no test function {name} in {path}")
    assert not problems, "docs/math.md names what does not exist:\n" + "\n".join(problems)


@pytest.mark.parametrize("bad,why", [
    ("`rebar_np/model/sbn.py:no_such_function`", "not defined"),
    ("`rebar_np/no_such_module.py:hard_pass`", "no such file"),
    ("`tests/test_train.py::test_no_such_test[a-b]`", "no test function"),
])
def test_reference_check_has_teeth(bad, why, monkeypatch):
    """A reference to something that does not exist makes test_code_references_exist fail."""
    text = math_text() + "\n" + bad + "\n"
    monkeypatch.setattr(sys.modules[__name__], "math_text", lambda: text)
    with pytest.raises(AssertionError, match=why):
        test_code_references_exist()


def test_parametrize_ids_and_single_colons_are_parsed():
    sample = ("`tests/test_rebar.py::test_rebar_gradcheck[rebar-sbn-1-False-True]` and "
              "`rebar_np/relaxed.py:relaxed_pass`, not `rebar_np/relaxed.py::x`")
    assert [(m.group(1), m.group(2)) for m in TEST_REF.finditer(sample)] == [
        ("tests/test_rebar.py", "test_rebar_gradcheck"), ("rebar_np/relaxed.py", "x")]
    assert [(m.group(1), m.group(2)) for m in CODE_REF.finditer(sample)] == [("rebar_np/relaxed.py", "relaxed_pass")]


def test_every_estimator_is_documented():
    text = math_text()
    missing = [name for name in ESTIMATORS if f"`{name}`" not in text]
    assert not missing, f"docs/math.md does not name the estimator(s) {', '.join(missing)}"


# docs/math.md, section "Title"  /  sections "A" and "B"  /  sections "A" to "B"
SECTION_POINTER = re.compile(r'docs/math\.md, sections? "([^"]+)"(?: (?:and|to) "([^"]+)")?')


def math_headings():
    """Heading titles of docs/math.md without their '#' marks and section numbers ("6.3 ", "1. ")."""
    return {re.sub(r"^[\d.]+\s+", "", line.lstrip("#").strip())
            for line in math_text().splitlines() if line.startswith("#")}


def test_section_pointers_in_the_package_name_real_headings():
    headings = math_headings()
    assert "Noise and samples" in headings and "REBAR for one layer" in headings
    pointers, bad = 0, []
    for path in files_under("rebar_np"):
        if not path.endswith(".py"):
            continue
        with open(path, encoding="utf-8") as fh:
            text = re.sub(r"\s+", " ", fh.read())          # a title may be wrapped across lines
        for m in SECTION_POINTER.finditer(text):
            for title in filter(None, m.groups()):
                pointers += 1
                if title not in headings:
                    bad.append(f"{os.path.relpath(path, ROOT)}: no section {title!r} in docs/math.md")
    assert pointers >= 10, f"only {pointers} section pointers found in rebar_np/"
    assert not bad, "\n".join(bad)


def outside_citations(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    return [f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}"
            for i, line in enumerate(text.splitlines(), 1) if any(p.search(line) for p in OUTSIDE)]


def files_under(folder):
    for top, dirs, files in os.walk(os.path.join(ROOT, folder)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            yield os.path.join(top, name)


def test_package_and_docs_point_inside_the_repository():
    paths = list(files_under("docs")) + list(files_under("rebar_np"))
    assert MATH in paths
    found = [hit for p in paths for hit in outside_citations(p)]
    assert not found, "cites a reference outside the repository:\n" + "\n".join(found)


def test_readme_points_inside_the_repository():
    found = outside_citations(os.path.join(ROOT, "README.md"))
    assert not found, "README.md cites a reference outside the repository:\n" + "\n".join(found)
