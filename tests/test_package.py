"""Lamella as a facility installs it: the sdist, the wheel built from it, and that wheel alone in a fresh
virtual environment outside the checkout, serving the demo. The Dockerfile's steps, where no Docker
engine is at hand (its health check is run against this server too).

No network at test time: the wheel is installed with ``--no-deps --no-index``, and its dependencies come
from this test environment's site-packages, which a ``.pth`` line in the fresh environment appends to
``sys.path``. Python runs the ``.pth`` files of site-packages folders only, not of folders such a line
adds, so the checkout's editable install (a ``.pth`` file and an import hook in this environment) stays
inactive there: ``viewer``, ``tiling``, ``annotations`` and the pages can only come from the wheel,
which the test checks before serving from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT

# What the build reads (setup.cfg, pyproject.toml, README.md for the long description) and the folders
# it packages; static/vendor (Swagger UI, made by `make`) comes along when present, as in a release.
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "viewer", "tiling", "annotations", "static")
PACKAGES = ("viewer", "tiling", "annotations")


@dataclass
class Installed:
    """The fresh environment with the wheel installed, and where it was built."""

    venv: Path
    wheel: Path
    sdist: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def lamella(self) -> Path:
        return self.venv / "bin" / "lamella"


def clean_env(venv: Path) -> dict[str, str]:
    """This process's environment without anything that would lead Python back to the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LAMELLA_")) and k != "VIRTUAL_ENV"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(*args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("package")
    # A copy of the sources, so the build leaves nothing (build/, *.egg-info) in the checkout.
    source = base / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = base / "dist"
    # python -m build: the sdist, then the wheel built from the unpacked sdist (so the sdist must carry
    # everything). Without isolation: the backend (setuptools) is taken from here, not downloaded.
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source, cwd=base, env=env)
    (wheel,) = dist.glob("lamella-*.whl")
    (sdist,) = dist.glob("lamella-*.tar.gz")

    venv = base / "fresh"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=base, env=env)
    fresh_site = Path(run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                          cwd=base, env=clean_env(venv)).strip())
    our_site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (fresh_site / "lamella_test_dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(our_site)))
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
        "--no-cache-dir", "--disable-pip-version-check", "--quiet", wheel, cwd=base, env=env)
    return Installed(venv=venv, wheel=wheel, sdist=sdist)


def test_sdist_and_wheel_carry_every_file_of_the_packages(installed: Installed) -> None:
    """Every module, migration and page of the checkout is in the sdist and the wheel (pages as viewer/static)."""
    files = [path.relative_to(ROOT) for folder in (*PACKAGES, "static") for path in (ROOT / folder).rglob("*")
             if path.is_file() and "__pycache__" not in path.parts]
    files = [path for path in files if path.suffix in (".py", ".mako") or path.parts[0] == "static"]
    in_wheel = {str(Path("viewer", *path.parts) if path.parts[0] == "static" else path) for path in files}
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert not in_wheel - names, f"missing from the wheel: {sorted(in_wheel - names)}"
    assert not any(name.startswith(("static/", "tests/", "benchmarks/", "docs/")) for name in names)
    with tarfile.open(installed.sdist) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    in_sdist = {str(path) for path in files} | {"setup.cfg", "pyproject.toml", "README.md"}
    assert not in_sdist - members, f"missing from the sdist: {sorted(in_sdist - members)}"


def test_the_installed_package_is_the_wheel(installed: Installed, tmp_path: Path) -> None:
    """Imported from the fresh environment, never from the checkout; the version is the wheel's."""
    out = run(installed.python, "-c",
              "import json, annotations, tiling, viewer, viewer.static; from viewer.handlers.pages import STATIC_DIR;"
              "print(json.dumps([m.__file__ for m in (annotations, tiling, viewer)] + [str(STATIC_DIR)]))",
              cwd=tmp_path, env=clean_env(installed.venv))
    for path in json.loads(out):
        assert Path(path).resolve().is_relative_to(installed.venv.resolve()), path
    version = installed.wheel.name.split("-")[1]
    assert run(installed.lamella, "--version", cwd=tmp_path, env=clean_env(installed.venv)) == f"lamella {version}\n"


def answers(url: str) -> bool:
    try:
        return requests.get(url + "/api/datasets", timeout=5).ok
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="module")
def served(installed: Installed, data_dir: tuple[Path, object], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[str]:
    """``lamella serve`` from the fresh environment, in a folder outside the checkout, on a copy of the test data
    directory (the demo as ``lamella demo`` makes it: its database opened and checked by the wheel's migrations)."""
    from tests.conftest import clone_data_dir

    home = tmp_path_factory.mktemp("facility")
    env = clean_env(installed.venv)
    clone_data_dir(data_dir[0], home / "data")
    process = subprocess.Popen([installed.lamella, "serve", "--data-dir", "data", "--port", "0"], cwd=home, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        match = re.search(r"(http://[\d.]+:\d+)/", process.stdout.readline())
        assert match, "the installed server did not start"
        url = match.group(1)
        deadline = time.monotonic() + 30
        while not answers(url):
            assert time.monotonic() < deadline, "the installed server did not answer within 30 s"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_the_installed_server_serves_the_demo(installed: Installed, served: str) -> None:
    def get(path: str) -> requests.Response:
        response = requests.get(served + path, timeout=30)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:200]}"
        return response

    assert "<html" in get("/").text
    assert "dataset.js" in get("/datasets/demo").text
    assert get("/static/css/lamella.css").content == (ROOT / "static" / "css" / "lamella.css").read_bytes()
    assert get("/static/js/dataset.js").headers["Content-Type"] == "application/javascript"
    assert get("/api/docs").headers["Content-Type"].startswith("text/html")
    if (ROOT / "static" / "vendor" / "swagger-ui" / "swagger-ui-bundle.js").exists():  # made by `make`
        get("/static/vendor/swagger-ui/swagger-ui-bundle.js")
    session = requests.post(served + "/api/datasets/demo/sessions", timeout=30)
    assert session.status_code == 201, session.text
    client = get(session.json()["viewer_url"])
    assert "<script" in client.text  # Neuroglancer's client from the neuroglancer wheel
    chunk = get("/api/datasets/demo/images/em/precomputed/0/0-64_0-64_0-64")
    assert chunk.headers["Content-Type"] == "image/jpeg" and chunk.content[:2] == b"\xff\xd8"
    assert get("/api/openapi.json").json()["info"]["version"] == installed.wheel.name.split("-")[1]


def dockerfile_healthcheck() -> list[str]:
    """The HEALTHCHECK command of the Dockerfile (exec form)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK\b.*?\bCMD\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert match, "the Dockerfile has no HEALTHCHECK in exec form"
    return json.loads(match.group(1))


def test_the_dockerfile_installs_the_wheel_and_its_health_check_passes(installed: Installed, served: str,
                                                                      tmp_path: Path) -> None:
    """The image's last stage installs the built wheel only, runs as a user of its own, and is healthy
    by its own health check, run here against the server from the wheel."""
    stages = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    final = stages[-1]
    assert "pip install -e" not in final and "--editable" not in final
    assert re.search(r"^RUN pip install /tmp/wheels/\*\.whl", final, re.MULTILINE)
    assert not re.search(r"^COPY (?!--from=build /dist/)", final, re.MULTILINE), "source copied into the image"
    user = re.search(r"^USER (\S+)", final, re.MULTILINE)
    assert user and user.group(1) not in ("root", "0")
    command = dockerfile_healthcheck()
    assert command[0] == "python"
    port = served.rsplit(":", 1)[1]
    env = {**clean_env(installed.venv), "LAMELLA_PORT": port}
    run(installed.python, *command[1:], cwd=tmp_path, env=env, timeout=30)
    env["LAMELLA_PORT"] = "9"  # discard: nothing listens, the check must fail
    result = subprocess.run([str(installed.python), *command[1:]], cwd=tmp_path, env=env, capture_output=True,
                            timeout=30)
    assert result.returncode != 0
