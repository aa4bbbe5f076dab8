"""environment.yml (Binder, conda) and pyproject.toml ask for the same packages with the same ranges."""

from __future__ import annotations

import tomllib

import yaml

from course_lib.notebooks import ROOT


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_pins_python_and_mirrors_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda and "pip" in conda
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    project = _pyproject()["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["binder"]
    assert sorted(pip) == sorted(wanted)


def test_python_range_includes_the_pinned_binder_python():
    assert ">=3.11" in _pyproject()["project"]["requires-python"]


def test_postbuild_installs_the_course_package():
    post_build = (ROOT / "postBuild").read_text()
    assert "pip install" in post_build and "-e ." in post_build
