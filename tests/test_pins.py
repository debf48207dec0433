"""One source of truth for versions: pyproject's exact pins, repeated in env.yml."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _norm(req: str) -> tuple[str, str]:
    name, _, version = req.partition("==")
    version = version.split(",")[0]  # an exact pin may carry a guard, e.g. "==1.0.4.post1,<2"
    return re.sub(r"[-_.]+", "-", name.strip().lower()), version.strip()


def pyproject_pins() -> dict:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(data["dependencies"])
    for extra in data["optional-dependencies"].values():
        reqs += extra
    return dict(_norm(r) for r in reqs)


def test_every_dependency_is_pinned_exactly():
    for name, version in pyproject_pins().items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+]*", version), f"{name} is not pinned with == (got {version!r})"


def test_env_yml_installs_the_same_set():
    env = yaml.safe_load((ROOT / "env.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = dict(_norm(r) for r in pip if "==" in r)
    assert conda_pins == pyproject_pins(), "env.yml and pyproject.toml disagree: copy the pins across"
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])


def test_torch_and_jupyter_book_pins():
    pins = pyproject_pins()
    assert pins["torch"] == "2.13.0"
    assert pins["jupyter-book"].startswith("1."), "Jupyter Book 2 fetches its theme online: stay on 1.x"


def test_installed_versions_match_the_pins():
    from importlib.metadata import PackageNotFoundError, version
    for name, pinned in pyproject_pins().items():
        try:
            got = version(name)
        except PackageNotFoundError:
            continue  # an extra not installed here (e.g. lab)
        assert got.split("+")[0] == pinned, f"{name}: installed {got}, pinned {pinned}; run `make setup`"
