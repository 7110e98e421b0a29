"""The API described: the OpenAPI 3.1 document covers the route table, the API viewer is served offline,
and schemathesis (every check) finds no server error, as an anonymous and as a signed-in client."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import LAMELLA, Server
from viewer.app import routes
from viewer.openapi import path_template

SCHEMATHESIS = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
# The signed-in run's account: a curator who may see no private dataset, so that every answer to its
# requests without credentials is a 401 or 403 (a private dataset's would be 404, by design).
SIGNED_IN = ("sam", "sam-password-1")


def test_every_route_and_method_is_described(server: Server) -> None:
    document = server.get("/api/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    described = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    table = {(path_template(route.pattern)[0], method) for route in routes() for method in route.rule.methods}
    assert described == table
    for item in document["paths"].values():
        for operation in item.values():
            assert operation["summary"] and operation["description"].startswith("Access:")
            assert "default" in operation["responses"] and operation["security"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer" and schemes["cookie"]["in"] == "cookie"
    assert schemes["xsrf"]["name"] == "X-XSRFToken"


def test_a_path_parameter_may_hold_groups_of_its_own() -> None:
    """A region's pattern nests groups: its path names one parameter, whose pattern is the whole of it."""
    import re

    region = next(route for route in routes() if route.name == "region-info")
    path, groups = path_template(region.pattern)
    assert path == "/api/datasets/{dataset_ref}/images/{image_name}/region/{region}/precomputed/info"
    pattern = dict(groups)["region"]
    assert re.fullmatch(pattern, "0_10_0_128_128_8") and not re.fullmatch(pattern, "0_10_0_128_128")
    assert path_template(r"/a/(?P<x>[()]{1,2})/(?P<y>\(b(?:c)\))")[1] == [("x", "[()]{1,2}"), ("y", r"\(b(?:c)\)")]


def test_api_viewer_is_served_from_this_server(server: Server) -> None:
    page = server.get("/api/docs")
    assert page.status_code == 200 and "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page.text
    assert "http" not in page.text.split("<body>")[0].replace("http-equiv", "")  # nothing from another host
    bundle = server.get("/static/vendor/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.headers["Content-Type"] == "application/javascript"
    assert len(bundle.content) > 500_000


# Values that reach real resources (schemathesis would otherwise mostly meet 404s), and where the API
# validates more than a schema can say, the statuses a schema-valid request may still get: geometry
# (a fit needs non-degenerate landmarks; the reference image has no transform of its own), layer names
# of the session's current state, and the compare-and-set generations of the state-sync protocol.
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
          "response_schema_conformance", "negative_data_rejection", "positive_data_acceptance",
          "missing_required_header", "unsupported_method", "allow_header_conformance", "use_after_free",
          "ensure_resource_availability", "ignored_auth", "object_level_authorization"]
# Every check, turned on here rather than by --checks all (an option given on the command line would
# override the one exception per operation below).
CONFIG = "\n".join(f"checks.{check}.enabled = true" for check in CHECKS) + """
checks.max_response_time = 10.0  # seconds: a stall, not a benchmark (timing is measured in benchmarks/)
# A body over its route's limit is refused before it is read: 413 is a rejection too.
checks.negative_data_rejection.expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
# Values come from the parameters below, not from earlier answers: an answer may name a dataset that a
# later request makes private, and a private dataset is 404 without credentials (see the visibility entry).
phases.examples.extra-data-sources.responses = false
phases.coverage.extra-data-sources.responses = false
phases.fuzzing.extra-data-sources.responses = false

[parameters]
dataset_ref = "correlative"
image_name = "fluorescence"
token = "{session}"
code = "{code}"
transform_id = "{spline}"
scale_key = "0"
chunk_name = "0-64_0-64_0-56"
key = "zarr.json"
account = "admin"
token_id = "{token_id}"
name = "index.html"
path = "css/lamella.css"
build = "0123456789ab"
shard = "0.shard"
segment = "1"

[[operations]]
# A spline-warped image is served on the reference image's grid.
include-path-regex = "/warped/"
parameters = {{ chunk_name = "0-64_0-64_0-64" }}

[[operations]]
include-path-regex = "(/transform|/landmarks|/register|/display|/landmark-layers)$"
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", 400, 401, 403, 404, 409, 429]

[[operations]]
# Whether an annotation fits depends on its layer (its types, labels, properties and bounds), and a layer's
# declaration on the dataset (relationships name its label images) and across fields (enum values and labels).
include-path-regex = "/annotation-layers(/[^/]+(/annotations(/[^/]+)?)?)?$"
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", 400, 401, 403, 404, 409, 429]

[[operations]]
# An import file must fit its layer (types, bounds, labels, property types), which no schema of a file says.
include-path-regex = "/annotation-layers/[^/]+/import$"
checks.positive_data_acceptance.expected-statuses = ["2XX", 400, 401, 403, 404, 429]

[[operations]]
# A precomputed annotation source names a layer, one of its types and a view in its one spelling.
include-path-regex = "/annotation-layers/[^/]+/precomputed/"
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", 400, 401, 403, 404, 429]

[[operations]]
# A project names the dataset's reference image, its tasks lie within it, a submission's marks fit its task (tool,
# labels, region) and are given or "nothing here" said, and numbers are whole where the schema's integers take 1.0.
include-path-regex = "/projects($|/)"
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", 400, 401, 403, 404, 409, 429]

[[operations]]
# A region is a box with lower < upper inside its image (and a chunk of its source one that meets it).
include-path-regex = "/region/"
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", 400, 401, 403, 404, 429]

[[operations]]
# Meshes are a label image's, under the name of their current build: another image or build has none.
include-path-regex = "(/precomputed/mesh/|/meshes/)"
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", 404, 401, 403, 429]

[[operations]]
# A shared view's link answers with a redirect to its dataset's page.
include-path-regex = "^/v/[^/]+$"
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", 401, 403, 404, 429]

[[operations]]
include-path-regex = "^/(state/|api/sessions/[^/]+$)"
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", 401, 403, 404, 409, 412, 429]

[[operations]]
# Making a dataset private is what makes an outsider's 404 right: it no longer exists for them. So the run
# changes the visibility of a dataset of its own, "{scratch}", and "correlative" stays public.
include-path-regex = "/visibility$"
include-method-regex = "^PUT$"
parameters = {{ dataset_ref = "{scratch}" }}
checks.ignored_auth.enabled = false
"""


def test_every_schemathesis_check_is_turned_on() -> None:
    from importlib.resources import files

    schema = json.loads((files("schemathesis") / "config" / "schema.json").read_text())
    known = set(schema["$defs"]["ChecksConfig"]["properties"]) - {"enabled"}
    assert known == {*CHECKS, "max_response_time"}


def run_schemathesis(server: Server, tmp_path: Path, *headers: str,
                     extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    admin = server.admin
    scratch = f"visible-{tmp_path.name[-12:].lower().replace('_', '-')}"
    made = requests.post(f"{server.url}/api/datasets", headers=admin, timeout=30,
                         json={"name": scratch, "visibility": "public"})
    assert made.status_code == 201, made.text
    requests.put(f"{server.url}/api/datasets/{scratch}/members/{SIGNED_IN[0]}", json={"role": "curator"},
                 headers=admin, timeout=30).raise_for_status()
    spline = requests.post(
        f"{server.url}/api/datasets/correlative/images/fluorescence/landmarks", headers=admin, timeout=60,
        json={"moving": np.random.default_rng(3).uniform(0, 3000, (8, 3)).tolist(),
              "reference": np.random.default_rng(4).uniform(0, 3000, (8, 3)).tolist(), "fit": "tps"},
    ).json()["transform"]["id"]
    session = requests.post(f"{server.url}/api/datasets/correlative/sessions", headers=admin, timeout=30)
    shared = requests.post(f"{server.url}/api/sessions/{session.json()['token']}/share", timeout=30)
    throwaway = requests.post(f"{server.url}/api/tokens", headers=admin, json={"label": "schemathesis"}, timeout=30)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(session=session.json()["token"], code=shared.json()["code"], spline=spline,
                                    scratch=scratch,
                                    token_id=throwaway.json()["id"]))
    command = [
        SCHEMATHESIS, "--config-file", str(config), "run", f"{server.url}/api/openapi.json",
        "--max-examples", "12", "--workers", "1", "--request-timeout", "30",
        "--phases", "examples,coverage,fuzzing",
        # An event stream never ends: its route is described, and tested by the state-sync tests.
        "--exclude-path-regex", "^/events/",
        "--seed", "20261202", *[part for header in headers for part in ("-H", header)], *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)


def summary(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stdout.splitlines() if not line.startswith("    '")]
    return "\n".join(lines[-150:])


@pytest.fixture(scope="module")
def api_server(scratch_server: Server) -> Server:
    """The scratch server with the signed-in run's curator (a member of "correlative" only)."""
    add = subprocess.run([*LAMELLA, "user", "add", SIGNED_IN[0], "--role", "curator", "--password-stdin",
                          "--data-dir", str(scratch_server.data_dir)], input=SIGNED_IN[1] + "\n", text=True,
                         capture_output=True, timeout=60)
    assert add.returncode == 0, add.stderr
    requests.put(f"{scratch_server.url}/api/datasets/correlative/members/{SIGNED_IN[0]}", json={"role": "curator"},
                 headers=scratch_server.admin, timeout=30).raise_for_status()
    return scratch_server


def test_schemathesis_anonymous(api_server: Server, tmp_path: Path) -> None:
    result = run_schemathesis(api_server, tmp_path)
    assert result.returncode == 0, summary(result)
    assert "passed" in result.stdout


def test_schemathesis_signed_in(api_server: Server, tmp_path: Path) -> None:
    """As a curator of "correlative", with a browser sign-in (cookie and XSRF header): writes reach the services."""
    scratch_server = api_server
    web = requests.Session()
    web.get(f"{scratch_server.url}/sign-in", timeout=10)
    xsrf = web.cookies["_xsrf"]
    signed = web.post(f"{scratch_server.url}/api/sign-in", json={"name": SIGNED_IN[0], "password": SIGNED_IN[1]},
                      headers={"X-XSRFToken": xsrf}, timeout=30)
    assert signed.ok, signed.text
    cookie = "; ".join(f"{name}={value}" for name, value in web.cookies.items())
    # Signing out would end the run's own sign-in (the anonymous run covers that route).
    result = run_schemathesis(scratch_server, tmp_path, f"Cookie: {cookie}", f"X-XSRFToken: {xsrf}",
                              extra=("--exclude-path", "/api/sign-out"))
    assert result.returncode == 0, summary(result)
    assert "passed" in result.stdout
    me = web.get(f"{scratch_server.url}/api/me", timeout=10).json()
    assert me["signed_in"], "the run signed the curator out (it must not be able to)"


@pytest.mark.parametrize("path", ["/api/openapi.json", "/api/docs"])
def test_description_is_public(server: Server, path: str) -> None:
    assert server.get(path).status_code == 200
