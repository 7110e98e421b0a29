"""What the route-table fuzzer (tests/fuzzing.py) knows of the server: real path values from the test data,
credentials, and what the server holds (read before and after a run), with what a successful write may change."""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from annotations.accounts import THROTTLE
from viewer.app import Route
from viewer.handlers.pages import NEUROGLANCER_CLIENT, STATIC_DIR

OPEN_DATASETS = ("correlative", "tests")  # where requests that may succeed as writes go
CURATOR = ("curie", "curie-password-1")  # tests/conftest.py
GROUP = re.compile(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)")  # a named group of a route pattern


# --- the world: real values from the test data ---------------------------------------------------------------------


Item = tuple[str, ...]  # ("dataset", name), ("members", name), ("transforms", name, image), ("session", token), …


@dataclass
class World:
    """What the fuzzer knows of the server: path values that fit together, credentials, and what to compare."""

    url: str
    admin_token: str
    signin_cookie: str
    contexts: list[dict[str, str]]  # each: values of path groups that reach one real resource together
    session_dataset: dict[str, str]  # session token -> its dataset
    images: dict[str, list[str]]  # dataset -> its image names
    items: list[Item]

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def eligible(self, route: Route) -> list[dict[str, str]]:
        """Contexts that fill every group of ``route`` (a warped route's context has a spline; others have none)."""
        groups = set(GROUP.findall(route.pattern))
        found = []
        for context in self.contexts:
            if groups <= context.keys() and ("transform_id" in context) == ("transform_id" in groups):
                found.append(context)
        return found


def fill(pattern: str, values: dict[str, str]) -> str:
    return GROUP.sub(lambda group: values[group.group(1)], pattern)


def _chunk_names(scale: dict[str, Any]) -> list[str]:
    """The first chunk of a precomputed scale and the last (clipped at the volume's edge)."""
    size, offset, chunk = scale["size"], scale.get("voxel_offset", [0, 0, 0]), scale["chunk_sizes"][0]
    first = "_".join(f"{o}-{o + min(c, s)}" for s, o, c in zip(size, offset, chunk, strict=True))
    last = []
    for s, o, c in zip(size, offset, chunk, strict=True):
        begin = o + ((s - 1) // c) * c
        last.append(f"{begin}-{o + s}")
    return [first, "_".join(last)]


def _mesh_files(http: requests.Session, base: str, info: dict[str, Any]) -> dict[str, str]:
    """A label image's current mesh build and its first shard file; a made-up build elsewhere (404)."""
    if "mesh" not in info:
        return {"build": "0123456789ab", "shard": "0.shard", "segment": "1"}
    build = info["mesh"].rsplit("/", 1)[-1]
    mesh_info = http.get(f"{base}/precomputed/mesh/{build}/info", timeout=30).json()
    bits = mesh_info["sharding"]["shard_bits"]
    return {"build": build, "shard": f"{0:0{(bits + 3) // 4}x}.shard", "segment": "1"}


def _zarr_keys(http: requests.Session, base: str, image: dict[str, Any]) -> list[str]:
    """Group metadata, the first level's array metadata and its first stored chunk (or shard)."""
    path = image["levels"][0]["path"]
    if image["zarr_format"] == 3:
        array = http.get(f"{base}/zarr/{path}/zarr.json", timeout=30).json()
        encoding = array.get("chunk_key_encoding", {})
        separator = encoding.get("configuration", {}).get("separator", "/")
        rank = len(array["shape"])
        prefix = "c" + separator if encoding.get("name", "default") == "default" else ""
        chunk = prefix + separator.join(["0"] * rank)
        return ["zarr.json", f"{path}/zarr.json", f"{path}/{chunk}"]
    array = http.get(f"{base}/zarr/{path}/.zarray", timeout=30).json()
    separator = array.get("dimension_separator") or "."
    return [".zattrs", f"{path}/.zarray", f"{path}/" + separator.join(["0"] * len(array["shape"]))]


def _make_spline(http: requests.Session, url: str, dataset: str, image: str) -> int | None:
    """A stored thin-plate spline for ``image``, so the warped routes have one to serve."""
    rng = random.Random(5)
    moving = [[rng.uniform(0, 4000), rng.uniform(0, 4000), rng.uniform(0, 2000)] for _ in range(12)]
    reference = [[x * 1.01 + 30, y * 0.99 - 20, z + 5] for x, y, z in moving]
    answer = http.post(f"{url}/api/datasets/{dataset}/images/{image}/landmarks", timeout=60,
                       json={"moving": moving, "reference": reference, "fit": "tps", "save": True})
    return answer.json()["transform"]["id"] if answer.status_code == 201 else None


FUZZ_LAYER = {"name": "fuzz", "types": ["point", "line"], "labels": [{"id": "synapse"}, {"id": "vesicle"}],
              "properties": [{"id": "confidence", "type": "float32"}]}


def _annotation_context(http: requests.Session, url: str, dataset: str, base: dict[str, str]) -> dict[str, str] | None:
    """A layer with two annotations in ``dataset``, and the path values that reach it and its precomputed source."""
    layers = f"{url}/api/datasets/{dataset}/annotation-layers"
    answer = http.post(layers, json=FUZZ_LAYER, timeout=30)
    if answer.status_code != 201:
        return None
    layer = answer.json()["id"]
    low, high = answer.json()["lower_bound"], answer.json()["upper_bound"]
    inside = [[lo + (hi - lo) * f for lo, hi in zip(low, high, strict=True)] for f in (0.25, 0.5)]
    made = http.post(f"{layers}/{layer}/annotations", timeout=30, json={"annotations": [
        {"type": "point", "point": inside[0], "label": "synapse", "properties": {"confidence": 0.5}},
        {"type": "line", "point_a": inside[0], "point_b": inside[1]}]})
    made.raise_for_status()
    return {**base, "layer_id": str(layer), "annotation_id": str(made.json()["ids"][0]), "kind": "point",
            "view": "current", "level": "0", "cell": "0_0_0", "relationship": "bodies", "segment": "1"}


def _editing_view(http: requests.Session, url: str, context: dict[str, str]) -> str | None:
    """The view the session of ``context`` shows its layer in, once the session has taken in the new layer."""
    if not http.post(f"{url}/api/sessions/{context['token']}/annotations", timeout=30).ok:
        return None
    state = http.get(f"{url}/api/sessions/{context['token']}", timeout=30).json()["state"]
    for layer in state.get("layers", []):
        for source in layer.get("source", []) if isinstance(layer.get("source"), list) else []:
            if isinstance(source, str) and f"/annotation-layers/{context['layer_id']}/precomputed/" in source:
                view = source.rsplit("/", 1)[1]
                return view if view.startswith("editing=") else None
    return None


def _make_project(http: requests.Session, url: str) -> dict[str, str]:
    """A Citizen Science project on the demo with a few tasks; path values for its routes (and a region of
    every image)."""
    made = http.post(f"{url}/api/datasets/demo/projects", timeout=30, json={
        "name": "fuzz", "title": "Fuzz", "image": "em", "workflow": {
            "tool": "point", "labels": ["mitochondrion"], "task_shape": [64, 64, 4], "redundancy": 3,
            "tutorial": [{"text": "t", "picture": {"lower": [0, 0, 0], "upper": [64, 64, 1]}}]}})
    if made.status_code != 201:
        return {"region": "0_0_0_8_8_8"}
    http.post(f"{url}/api/datasets/demo/projects/fuzz/tasks", json={"lower": [0, 0, 0], "upper": [128, 128, 4]},
              timeout=30)
    task = http.get(f"{url}/api/datasets/demo/projects/fuzz/tasks", timeout=30).json()["tasks"][0]["id"]
    return {"project": "fuzz", "task_id": str(task), "step": "0", "region": "0_0_0_8_8_8"}


def sign_in(url: str, name: str, password: str) -> str:
    """The sign-in cookie's value for an account (a browser's sign-in: the _xsrf cookie echoed in a header)."""
    browser = requests.Session()
    browser.get(f"{url}/sign-in", timeout=30)
    xsrf = browser.cookies["_xsrf"]
    answer = browser.post(f"{url}/api/sign-in", json={"name": name, "password": password},
                          headers={"X-XSRFToken": xsrf}, timeout=30)
    answer.raise_for_status()
    return browser.cookies["lamella_signin"]


def spend_sign_in_budget(url: str) -> None:
    """Make this address's sign-ins refused at once (429), as an attacker's are after 30 failures.

    A sign-in costs an Argon2 verification (about 95 ms of CPU) and, after a few failures, waits up to 8 s
    before answering: thousands of fuzzed sign-ins would measure the throttle. Thirty failures sent at
    once (before any of them is counted, so none waits) spend the address's budget for the throttle's
    window; fuzzed sign-ins are then still parsed and refused (400) when malformed, and refused with
    429 when well-formed. A mutated ``X-Forwarded-For`` or ``X-Real-Ip`` is never a valid address here.
    """
    def fail(_: int) -> int:
        return requests.post(f"{url}/api/sign-in", json={"name": "fuzz-nobody", "password": "wrong"}, timeout=60,
                             headers={"Cookie": "_xsrf=66757a7a", "X-XSRFToken": "66757a7a"}).status_code

    with ThreadPoolExecutor(THROTTLE.address_refuse_after) as pool:
        list(pool.map(fail, range(THROTTLE.address_refuse_after)))
    refused = fail(0)
    assert refused == 429, f"after {THROTTLE.address_refuse_after} failed sign-ins the next answered {refused}"


def discover(url: str, admin_token: str) -> World:
    """Read (and make, where the test data has none) the resources the fuzzer aims at."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {admin_token}"
    datasets = http.get(f"{url}/api/datasets", timeout=30).json()["datasets"]
    splines: dict[tuple[str, str], int] = {}
    for dataset in datasets:
        if dataset["name"] in OPEN_DATASETS and "fluorescence" in {i["name"] for i in dataset["images"]}:
            spline = _make_spline(http, url, dataset["name"], "fluorescence")
            if spline is not None:
                splines[(dataset["name"], "fluorescence")] = spline
    tokens: dict[str, str] = {}
    for dataset in datasets:
        answer = http.post(f"{url}/api/datasets/{dataset['name']}/sessions", timeout=30)
        answer.raise_for_status()
        tokens[dataset["name"]] = answer.json()["token"]
    codes = {name: http.post(f"{url}/api/sessions/{token}/share", timeout=30).json()["code"]
             for name, token in tokens.items()}
    anonymous = requests.post(f"{url}/api/datasets/demo/sessions", timeout=30)
    spare_token = http.post(f"{url}/api/tokens", json={"label": "fuzz: may be revoked"}, timeout=30).json()["id"]
    statics = sorted(str(p.relative_to(STATIC_DIR)) for p in STATIC_DIR.rglob("*") if p.is_file()
                     and "vendor" not in p.parts)[:6]
    client = ["index.html", min(NEUROGLANCER_CLIENT.glob("*.js"), key=lambda p: p.stat().st_size).name]
    contexts: list[dict[str, str]] = []
    images: dict[str, list[str]] = {}
    items: list[Item] = [("listing",), ("accounts",)]
    for dataset in datasets:
        name = dataset["name"]
        images[name] = [image["name"] for image in dataset["images"]]
        items += [("dataset", name), ("members", name)]
        for number, image in enumerate(dataset["images"]):
            base = f"{url}/api/datasets/{name}/images/{image['name']}"
            items.append(("transforms", name, image["name"]))
            info = http.get(f"{base}/precomputed/info", timeout=30).json()
            chunks = [(scale["key"], chunk) for scale in info["scales"][:2] for chunk in _chunk_names(scale)]
            keys = _zarr_keys(http, base, image)
            meshes = _mesh_files(http, base, info)
            for turn in range(3):
                scale_key, chunk_name = chunks[turn % len(chunks)]
                contexts.append({
                    "dataset_ref": name, "image_name": image["name"], "scale_key": scale_key,
                    "chunk_name": chunk_name, "key": keys[turn % len(keys)], "token": tokens[name], "code": codes[name],
                    "account": CURATOR[0], "token_id": str(spare_token), "name": client[(turn + number) % len(client)],
                    "path": statics[(turn + number) % len(statics)], **meshes,
                })
            spline = splines.get((name, image["name"]))
            if spline is not None:
                warped = http.get(f"{base}/warped/{spline}/precomputed/info", timeout=60).json()
                for scale_key, chunk_name in [(s["key"], c) for s in warped["scales"][-2:] for c in _chunk_names(s)]:
                    contexts.append({**contexts[-1], "transform_id": str(spline), "scale_key": scale_key,
                                     "chunk_name": chunk_name})
    for dataset in datasets:
        context = _annotation_context(http, url, dataset["name"],
                                      next(c for c in contexts if c["dataset_ref"] == dataset["name"]))
        if context is not None:
            contexts.append(context)
            items.append(("layer", dataset["name"], context["layer_id"]))
            editing = _editing_view(http, url, context)
            if editing is not None:  # the view a session's view layer reads (without what its edit layer holds)
                contexts.append({**context, "view": editing})
    session_dataset = {token: name for name, token in tokens.items()}
    if anonymous.ok:
        session_dataset[anonymous.json()["token"]] = "demo"
        contexts.append({**next(c for c in contexts if c["dataset_ref"] == "demo"), "token": anonymous.json()["token"]})
    items += [("session", token) for token in session_dataset]
    project = _make_project(http, url)
    for context in contexts:
        context.update(project)
    if project:
        items.append(("project", "demo", project["project"]))
    cookie = sign_in(url, *CURATOR)
    spend_sign_in_budget(url)
    return World(url, admin_token, cookie, contexts, session_dataset, images, items)


# --- what the server holds, and what a write may change ------------------------------------------------------------


def read_item(http: requests.Session, url: str, item: Item) -> Any:
    paths = {
        "listing": lambda: "/api/datasets",
        "accounts": lambda: "/api/accounts",
        "dataset": lambda: f"/api/datasets/{item[1]}",
        "members": lambda: f"/api/datasets/{item[1]}/members",
        "transforms": lambda: f"/api/datasets/{item[1]}/images/{item[2]}/transform?history=1",
        "session": lambda: f"/api/sessions/{item[1]}",
        "layer": lambda: f"/api/datasets/{item[1]}/annotation-layers/{item[2]}/annotations?limit=1000",
        "project": lambda: f"/api/datasets/{item[1]}/projects/{item[2]}/tasks?limit=1000",
    }
    answer = http.get(url + paths[item[0]](), timeout=60)
    document = answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") else None
    if item[0] == "listing" and answer.status_code == 200:
        return sorted(d["name"] for d in document["datasets"])
    return answer.status_code, document


def snapshot(world: World) -> dict[Item, Any]:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {world.admin_token}"
    return {item: read_item(http, world.url, item) for item in world.items}


def family(world: World, dataset: str) -> set[Item]:
    """Everything of a dataset: its record, members, transforms, annotation layers, and the viewer sessions on it."""
    found: set[Item] = {("dataset", dataset), ("members", dataset)}
    found |= {("transforms", dataset, image) for image in world.images.get(dataset, [])}
    found |= {("session", token) for token, on in world.session_dataset.items() if on == dataset}
    found |= {item for item in world.items if item[0] in ("layer", "project") and item[1] == dataset}
    return found


def touches(world: World, route: str, groups: dict[str, str]) -> set[Item]:
    """What a successful write to ``route`` may change (a route not named here: everything of its scope)."""
    dataset = groups.get("dataset_ref")
    token = groups.get("token")
    if route in ("tokens", "token", "sign-in", "sign-out", "dataset-sessions", "credentials", "datasets"):
        return set()  # API tokens and sign-ins are not compared; new datasets and sessions are new
    if route == "dataset":
        return {("dataset", dataset or "")}
    if route == "visibility":
        return {("dataset", dataset or "")}
    if route == "member":
        return {("members", dataset or "")}
    if route in ("session", "session-display", "session-landmark-layers", "state", "action", "session-annotations",
                 "session-share"):
        return {("session", token or "")}
    # transform, landmarks, session-register and any other: everything of the dataset (open viewers move).
    if token is not None:
        dataset = world.session_dataset.get(token, dataset)
        found = {("session", token)}
        return found | (family(world, dataset) if dataset else set(world.items))
    return family(world, dataset) if dataset else set(world.items)
