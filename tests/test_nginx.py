"""The nginx deployment of docs/deploy-nginx.md, run for real: nginx with docs/nginx/lamella.conf in
front of ``lamella serve --accel-redirect /_stored``, over real sockets.

nginx serves stored Zarr keys from disk once Lamella has allowed the request (``auth_request`` to
``…/stored-access``, the decision cached per dataset, image and credential for a few seconds);
everything else goes to Lamella. The data directory is this module's own: it makes a dataset
private and plants symlinks, which other tests must not see.
"""

from __future__ import annotations

import http.client
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from annotations.accounts import Accounts
from annotations.catalog import Catalog, NewDataset
from annotations.db import make_engine, make_sessions, migrate, sqlite_url
from tests.conftest import CURATOR, LAMELLA, ROOT, Server, start_server, stop_server
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.sources import ArraySource
from viewer.identity import ACCESS_CACHE_SECONDS
from viewer.registration import add_existing

SITE = ROOT / "docs" / "nginx" / "lamella.conf"
DOC = ROOT / "docs" / "deploy-nginx.md"
# Debian installs nginx in sbin, which is not on every user's PATH: look beside each bin folder too.
_SEARCH = os.environ.get("PATH", os.defpath).split(os.pathsep)
NGINX = os.environ.get("NGINX") or shutil.which("nginx", path=os.pathsep.join(
    _SEARCH + [str(Path(folder).with_name("sbin")) for folder in _SEARCH if Path(folder).name == "bin"]))
SECRET = "lamella-test-secret-" + uuid.uuid4().hex  # in a file next to the stores, never to be served
SYSTEM_FILE = "etc/passwd"  # a traversal probe's classic target, on every Linux host; its text starts "root:"
ESCAPED_FILE = SYSTEM_FILE.replace("/", "%2f")

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light; `make test` installs it)"
)

# The nginx main configuration around the documented site: its own pid, logs and temp paths.
NGINX_MAIN = """\
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 256;
}}
http {{
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include {prefix}/lamella.conf;
}}
"""


def nginx_decision_seconds() -> int:
    """How long nginx keeps an access decision at most: proxy_cache_valid, plus its whole-second clock."""
    match = re.search(r"^\s*proxy_cache_valid 204 401 403 404 (\d+)s;", SITE.read_text(), re.M)
    assert match, "docs/nginx/lamella.conf has no proxy_cache_valid line for the access decisions"
    return int(match.group(1)) + 1


# What docs/deploy-nginx.md promises: a revocation reaches every client within this many seconds.
REVOCATION_SECONDS = nginx_decision_seconds() + int(ACCESS_CACHE_SECONDS)


@dataclass
class Deployment:
    data: Path
    stores: Path
    lamella: Server
    url: str
    prefix: Path
    token: str  # the admin's API token

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)  # type: ignore[arg-type]

    def raw(self, method: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A request with exactly this request target (no client-side normalisation)."""
        host, port = self.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.putrequest(method, target, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def log_line(self, tag: str) -> str:
        """The access-log line of the request whose query string carried ``tag``."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for line in (self.prefix / "access.log").read_text().splitlines():
                if tag in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no access-log line for {tag}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_store(path: Path, seed: int, **options: object) -> np.ndarray:
    array = np.random.default_rng(seed).integers(0, 255, size=(40, 70, 90), dtype=np.uint8)
    write_pyramid(ArraySource(array), path, voxel_size=(10.0, 10.0, 10.0),
                  options=PyramidOptions(chunk=32, **options))  # type: ignore[arg-type]
    return array


def make_data(root: Path) -> str:
    """Public datasets "open" and "flip", the private "embargoed" (curated by CURATOR); the admin's token."""
    stores = root / "stores"
    write_store(stores / "a.ome.zarr", 1, name="a", shard_chunks=1)  # OME-Zarr 0.5, one chunk per shard file
    write_store(stores / "v2.ome.zarr", 2, name="v2", ome_version="0.4")  # .zarray, .zattrs, .zgroup
    write_store(stores / "odd name+1.ome.zarr", 3, name="odd")  # a folder nginx cannot take as it is
    write_store(stores / "probe.ome.zarr", 4, name="probe")  # gets symlinks below
    engine = make_engine(sqlite_url(root))
    migrate(engine)
    sessions = make_sessions(engine)
    catalog = Catalog(sessions)
    accounts = Accounts(sessions)
    accounts.create("admin", "admin")
    token, _ = accounts.create_token("admin", label="tests")
    curie = accounts.create(CURATOR[0], "curator", password=CURATOR[1])
    add_existing(catalog, str(stores / "a.ome.zarr"), "open", name="a")
    add_existing(catalog, str(stores / "v2.ome.zarr"), "open", name="v2")
    add_existing(catalog, str(stores / "odd name+1.ome.zarr"), "open", name="odd")
    add_existing(catalog, str(stores / "probe.ome.zarr"), "open", name="probe")
    add_existing(catalog, str(stores / "a.ome.zarr"), "flip", name="a")
    add_existing(catalog, str(stores / "v2.ome.zarr"), "embargoed", name="v2",
                 new=NewDataset(visibility="private", curator=curie.id))
    engine.dispose()
    # Symlinks inside a store: out of it (never served), and to another key of it (served).
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    probe = stores / "probe.ome.zarr"
    (probe / "leak").symlink_to(outside / "secret.txt")
    (probe / "leakdir").symlink_to(outside)
    (probe / "0" / "leak.json").symlink_to("../../../outside/secret.txt")
    (probe / "alias.json").symlink_to("0/zarr.json")
    return token


def render_site(values: dict[str, str]) -> str:
    text = SITE.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    assert not re.search(r"@[A-Z_]+@", text), "a placeholder of docs/nginx/lamella.conf has no value"
    return text


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    # Not under pytest's tmp_path: nginx workers run as an unprivileged user when the tests run as root,
    # and must be able to read the stores (as www-data must in production).
    root = Path(tempfile.mkdtemp(prefix="lamella-nginx-"))
    root.chmod(0o755)
    try:
        data = root / "data"
        data.mkdir()
        token = make_data(data)
        lamella = start_server(data, "--accel-redirect", "/_stored")
        lamella.admin_token = token
        prefix = root / "nginx"
        (prefix / "temp").mkdir(parents=True)
        port = free_port()
        (prefix / "lamella.conf").write_text(render_site({
            "LISTEN": f"127.0.0.1:{port}",
            "SERVER_NAME": "localhost",
            "LAMELLA": lamella.url.removeprefix("http://"),
            "CACHE_DIR": str(prefix / "access-cache"),
            "ACCESS_LOG": f"{prefix / 'access.log'} lamella",
        }))
        (prefix / "nginx.conf").write_text(NGINX_MAIN.format(prefix=prefix))
        assert NGINX is not None
        argv = [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf")]
        checked = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        process = subprocess.Popen([*argv, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                try:
                    requests.get(url + "/api/datasets", timeout=5)
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline, "nginx did not answer within 30 s"
                    time.sleep(0.1)
            yield Deployment(data, data / "stores", lamella, url, prefix, token)
            errors = [line for line in (prefix / "error.log").read_text().splitlines()
                      if re.search(r"\[(emerg|alert)\]", line)]
            assert not errors, errors
        finally:
            process.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            stop_server(lamella)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def zarr_path(dataset: str, image: str, key: str) -> str:
    return f"/api/datasets/{dataset}/images/{image}/zarr/{key}"


def stored_keys(store: Path) -> list[str]:
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file() and not p.is_symlink())


def json_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["ok"] is False and body["status"] == status and body["code"] == code and body["message"]


# (1) Public keys: from disk, byte for byte, with public caching and CORS


def test_public_keys_are_the_stored_files(deployment: Deployment) -> None:
    for image, store in (("a", "a.ome.zarr"), ("v2", "v2.ome.zarr")):
        keys = stored_keys(deployment.stores / store)
        assert len(keys) > 20
        for key in keys:
            response = deployment.get(zarr_path("open", image, key))
            assert response.status_code == 200, (key, response.text)
            assert response.content == (deployment.stores / store / key).read_bytes(), key
            assert response.headers["Cache-Control"] == "public, max-age=86400"
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "ETag" in response.headers["Access-Control-Expose-Headers"]
            assert "Vary" not in response.headers and "X-Lamella-Root" not in response.headers
            metadata = key.rsplit("/", 1)[-1] in ("zarr.json", ".zarray", ".zattrs", ".zgroup")
            assert response.headers["Content-Type"] == ("application/json" if metadata else "application/octet-stream")
            assert response.headers["Accept-Ranges"] == "bytes" and response.headers["ETag"]
            assert "Content-Encoding" not in response.headers  # gzip stays away from chunks


def test_ranges_etags_and_head_are_nginx_own(deployment: Deployment) -> None:
    store = deployment.stores / "a.ome.zarr"
    shard = next(k for k in stored_keys(store) if k.startswith("0/c/"))
    data = (store / shard).read_bytes()
    path = zarr_path("open", "a", shard)
    response = deployment.get(path, headers={"Range": "bytes=100-1123"})
    assert response.status_code == 206 and response.content == data[100:1124]
    assert response.headers["Content-Range"] == f"bytes 100-1123/{len(data)}"
    assert response.headers["Cache-Control"] == "public, max-age=86400"
    suffix = deployment.get(path, headers={"Range": "bytes=-16"})  # the shard index's crc, as a reader asks
    assert suffix.status_code == 206 and suffix.content == data[-16:]
    etag = deployment.get(path).headers["ETag"]
    assert deployment.get(path, headers={"If-None-Match": etag}).status_code == 304
    head = requests.head(deployment.url + path, timeout=30)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data) and not head.content
    assert deployment.get(path, headers={"Range": f"bytes={len(data)}-"}).status_code == 416


def test_public_keys_do_not_ask_lamella_each_time(deployment: Deployment) -> None:
    """After the first request, keys come from disk with the cached decision: no request reaches Lamella."""
    keys = stored_keys(deployment.stores / "a.ome.zarr")[:8]
    lines = []
    started = time.monotonic()
    for key in keys * 2:
        tag = uuid.uuid4().hex
        assert deployment.get(zarr_path("open", "a", key) + f"?t={tag}").status_code == 200
        lines.append(deployment.log_line(tag))
    assert all(line.endswith("upstream=-") for line in lines), lines  # never proxied to Lamella
    periods = math.ceil((time.monotonic() - started) / (nginx_decision_seconds() - 1)) + 1
    decided = [re.search(r"access=(\w+)", line).group(1) for line in lines]  # type: ignore[union-attr]
    # Lamella is asked once per period of the cached decision; every other request is a cache hit.
    assert decided.count("HIT") >= len(lines) - periods and set(decided) <= {"HIT", "MISS", "EXPIRED"}, decided


def test_unusual_store_folders_and_missing_keys_go_to_lamella(deployment: Deployment) -> None:
    # A folder with a space and a plus: nginx cannot use X-Lamella-Root as it is; Lamella redirects instead.
    store = deployment.stores / "odd name+1.ome.zarr"
    for key in stored_keys(store)[:5]:
        tag = uuid.uuid4().hex
        response = deployment.get(zarr_path("open", "odd", key) + f"?t={tag}")
        assert response.status_code == 200 and response.content == (store / key).read_bytes()
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "upstream=127.0.0.1:" in deployment.log_line(tag)
    # Missing keys and folders: Lamella's JSON 404.
    json_error(deployment.get(zarr_path("open", "a", "0/c/9/9/9")), 404, "key_not_found")
    json_error(deployment.get(zarr_path("open", "a", "0")), 404, "key_not_found")
    json_error(deployment.get(zarr_path("open", "nope", "zarr.json")), 404, "image_not_found")
    json_error(deployment.get(zarr_path("nope", "a", "zarr.json")), 404, "dataset_not_found")


# (2) A private dataset: refused without credentials, served with them


def sign_in(deployment: Deployment, name: str, password: str) -> requests.Session:
    """A browser's sign-in through nginx: the page sets the XSRF cookie, the form POSTs to Lamella."""
    browser = requests.Session()
    assert browser.get(deployment.url + "/sign-in", timeout=30).status_code == 200
    response = browser.post(deployment.url + "/api/sign-in", json={"name": name, "password": password},
                            headers={"X-XSRFToken": browser.cookies["_xsrf"]}, timeout=30)
    assert response.status_code == 200, response.text
    assert browser.cookies.get("lamella_signin")
    return browser


def test_private_keys_need_credentials(deployment: Deployment) -> None:
    store = deployment.stores / "v2.ome.zarr"
    keys = [".zattrs", "0/.zarray", next(k for k in stored_keys(store) if k.startswith("0/0/"))]
    curator = sign_in(deployment, *CURATOR)
    for key in keys:
        path = zarr_path("embargoed", "v2", key)
        for _ in range(2):  # the refusal is cached too: the second answer is the same
            response = deployment.get(path)
            json_error(response, 404, "dataset_not_found")
            assert response.json()["message"] == "no dataset 'embargoed'"
            assert SECRET not in response.text and len(response.content) < 200
        as_curator = curator.get(deployment.url + path, timeout=30)
        for response in (deployment.get(path, headers=deployment.admin), as_curator):
            assert response.status_code == 200 and response.content == (store / key).read_bytes()
            assert response.headers["Cache-Control"] == "private, max-age=86400"
            assert response.headers["Vary"] == "Cookie, Authorization"
            assert "Access-Control-Allow-Origin" not in response.headers
        # The credential is part of the cached decision: anonymous is still refused right after.
        json_error(deployment.get(path), 404, "dataset_not_found")
    ranged = deployment.get(zarr_path("embargoed", "v2", keys[2]), headers={**deployment.admin, "Range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.content == (store / keys[2]).read_bytes()[:10]


def test_bad_credentials_get_lamella_errors(deployment: Deployment) -> None:
    path = zarr_path("embargoed", "v2", ".zattrs")
    for _ in range(2):
        response = deployment.get(path, headers={"Authorization": "Bearer lmt_not-a-token"})
        json_error(response, 401, "not_authenticated")
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="lamella"'
    # A bad token is refused on a public dataset too, as by Lamella itself.
    json_error(deployment.get(zarr_path("open", "a", "zarr.json"), headers={"Authorization": "Basic eDp5"}), 401,
               "not_authenticated")
    # A forged cookie is no sign-in: anonymous, so the private dataset is not found.
    json_error(deployment.get(path, headers={"Cookie": "lamella_signin=2|1:0|10:1|14:lamella_signin|4:eA==|00"}),
               404, "dataset_not_found")


def test_cache_key_cannot_be_poisoned(deployment: Deployment) -> None:
    """The access check sees exactly the credential that is in nginx's cache key, so no request stores
    an 'allowed' decision under another credential's key (here: the anonymous one).

    A request with the curator's cookie behind an empty one is decided as anonymous by nginx (the first
    value) and refused; Lamella, asked for the answer, reads the last value and may serve it: the client
    does hold the curator's sign-in. Either way anonymous requests stay refused.
    """
    curator = sign_in(deployment, *CURATOR)
    cookie = curator.cookies["lamella_signin"]
    path = zarr_path("embargoed", "v2", "0/.zarray")
    for header in (f"lamella_signin=; lamella_signin={cookie}", f"other=1; lamella_signin=; lamella_signin={cookie}",
                   f"lamella_signin={cookie}; lamella_signin=", f"lamella_signin={cookie}"):
        for _ in range(2):
            status, _, _ = deployment.raw("GET", path, {"Cookie": header})
            assert status == 200
            json_error(deployment.get(path), 404, "dataset_not_found")
    # Two Authorization headers: nginx refuses the request itself.
    status, _, _ = deployment.raw("GET", path, {"Authorization": "Bearer lmt_x",
                                                "authorization": deployment.admin["Authorization"]})
    assert status == 400
    json_error(deployment.get(path), 404, "dataset_not_found")


# (3) A dataset made private: refused within the documented time


def poll(deployment: Deployment, path: str, until: int, limit: float, **kwargs: object) -> float:
    """Seconds until GET ``path`` answers ``until`` (polled every 0.1 s); fails after ``limit`` seconds."""
    started = time.monotonic()
    while True:
        status = deployment.get(path, **kwargs).status_code
        elapsed = time.monotonic() - started
        if status == until:
            return elapsed
        assert elapsed < limit, f"GET {path} still answered {status} after {elapsed:.1f} s (bound {limit} s)"
        time.sleep(0.1)


def test_the_revocation_time_is_documented() -> None:
    assert f"at most **{REVOCATION_SECONDS} s**" in DOC.read_text()


def test_dataset_made_private_is_refused_within_the_documented_time(deployment: Deployment) -> None:
    path = zarr_path("flip", "a", "zarr.json")
    # Warm both caches (nginx's decision and Lamella's), as a busy public dataset has them.
    for _ in range(3):
        assert deployment.get(path).status_code == 200
        time.sleep(0.2)
    done = subprocess.run([*LAMELLA, "visibility", "flip", "private", "--data-dir", str(deployment.data)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # A little slack over the documented bound for the poll interval and the requests themselves.
    refused_after = poll(deployment, path, 404, REVOCATION_SECONDS + 1.0)
    assert deployment.get(path, headers=deployment.admin).status_code == 200
    # Public again, through nginx with the admin's token (a write that goes to Lamella).
    response = requests.put(deployment.url + "/api/datasets/flip/visibility", json={"visibility": "public"},
                            headers=deployment.admin, timeout=30)
    assert response.status_code == 200 and response.json()["public"] is True
    public_after = poll(deployment, path, 200, REVOCATION_SECONDS + 1.0)
    print(f"refused {refused_after:.1f} s after `lamella visibility flip private`; "
          f"served {public_after:.1f} s after it was public again (bound {REVOCATION_SECONDS} s)")


# (4) Traversal: nothing outside the store, ever


@pytest.mark.parametrize(
    "key",
    [
        "../../../../../../../" + SYSTEM_FILE,
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/" + SYSTEM_FILE,
        "..%2f..%2f..%2f..%2f..%2f..%2f" + ESCAPED_FILE,
        "0/%2e%2e/%2e%2e/%2e%2e/outside/secret.txt",
        ".%2e/.%2e/outside/secret.txt",
        "%2F" + ESCAPED_FILE.replace("%2f", "%2F"),
        "/" + SYSTEM_FILE,
        "//" + SYSTEM_FILE,
        "0/c/%00",
        "leak",
        "leakdir/secret.txt",
        "0/leak.json",
        "0\\..\\..\\outside\\secret.txt",
    ],
)
def test_traversal_probes(deployment: Deployment, key: str) -> None:
    base = "/api/datasets/open/images/probe/zarr/"
    for target in (base + key, base + key.replace("%2e", "%2E"), "/api/datasets/open/images/probe/zarr" + key):
        for headers in ({}, deployment.admin):
            status, _, body = deployment.raw("GET", target, headers)
            assert status in (400, 404), (target, status, body[:200])
            assert SECRET.encode() not in body and b"root:" not in body


def test_internal_locations_are_unreachable(deployment: Deployment) -> None:
    secret = deployment.data / "outside" / "secret.txt"
    for target in ("/_stored" + str(secret), "/_stored/" + SYSTEM_FILE, "/_lamella_access",
                   "/_lamella_access/open/a", "/_lamella_access?x=1"):
        status, headers, body = deployment.raw("GET", target)
        assert status in (403, 404), (target, status)
        assert SECRET.encode() not in body and b"root:" not in body and "x-lamella-root" not in headers


def test_symlink_inside_the_store_is_served_by_lamella(deployment: Deployment) -> None:
    tag = uuid.uuid4().hex
    response = deployment.get(zarr_path("open", "probe", "alias.json") + f"?t={tag}")
    assert response.status_code == 200
    assert response.content == (deployment.stores / "probe.ome.zarr" / "0" / "zarr.json").read_bytes()
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "upstream=127.0.0.1:" in deployment.log_line(tag)  # nginx refuses symlinks; Lamella checked it


# (5) Everything that is not a stored key read still reaches Lamella


def test_other_requests_reach_lamella(deployment: Deployment) -> None:
    listing = deployment.get("/api/datasets")
    assert listing.status_code == 200
    names = {d["name"] for d in listing.json()["datasets"]}
    assert {"open", "flip"} <= names and "embargoed" not in names
    everything = deployment.get("/api/datasets", headers=deployment.admin).json()["datasets"]
    assert "embargoed" in {d["name"] for d in everything}
    assert deployment.get("/").headers["Content-Type"].startswith("text/html")
    me = deployment.get("/api/me", headers=deployment.admin).json()
    assert me["name"] == "admin" and me["via"] == "token"
    info = deployment.get("/api/datasets/open/images/a/precomputed/info")
    assert info.status_code == 200 and info.json()["scales"]
    # Methods other than GET and HEAD on a key: Lamella answers (405 with Allow; the CORS preflight).
    post = requests.post(deployment.url + zarr_path("open", "a", "zarr.json"), data=b"x", timeout=30)
    json_error(post, 405, "method_not_allowed")
    assert "GET" in post.headers["Allow"]
    preflight = requests.options(deployment.url + zarr_path("open", "a", "zarr.json"), timeout=30,
                                 headers={"Origin": "https://example.org", "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 204 and preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "Range" in preflight.headers["Access-Control-Allow-Headers"]
    # Keys nginx does not take (odd characters): Lamella decides.
    json_error(deployment.get(zarr_path("open", "a", "0/c/a%20b")), 400, "invalid_key")
    json_error(deployment.get(zarr_path("open", "a", "0/c/" + "x" * 200 + "/" + "y" * 200)), 404, "key_not_found")


def test_the_doc_quotes_the_tested_configuration() -> None:
    """docs/deploy-nginx.md shows docs/nginx/lamella.conf verbatim: the doc and the test cannot drift apart."""
    doc, site = DOC.read_text(), SITE.read_text()
    assert f"```nginx\n{site}```" in doc
    # No folder of a particular machine: nothing under the folder of the doc's example data directory, of this
    # checkout or the temp folder.
    example_data = re.search(r"--data-dir (\S+)", doc)
    assert example_data is not None
    for folder in (Path(example_data.group(1)).parent, ROOT.parent, Path(tempfile.gettempdir())):
        assert f"{folder}/" not in site, folder
