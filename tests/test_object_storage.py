"""Object storage: images imported into, registered from and served out of an S3-compatible bucket.

A real S3 server (moto's server mode) runs on loopback for the module, with credentials checked
(IAM users of its own): nothing is fetched from the internet. The bucket's image is read back with
tensorstore and zarr-python (obstore) directly, and through the Lamella server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from tests.conftest import LAMELLA, ROOT, Server, start_server, stop_server
from tests.test_cli import assert_one_line_error

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

BUCKET = "lamella-test"
PUBLIC = "lamella-public"
SHAPE = (40, 70, 90)  # z, y, x
VOXEL_NM = (8.0, 4.0, 4.0)


@dataclass
class S3:
    endpoint: str
    key: str
    secret: str

    @property
    def env(self) -> dict[str, str]:
        """The variables a Lamella process needs to use this server with the user's credentials."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret}

    def client(self) -> object:
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)  # type: ignore[attr-defined]
        return [item["Key"] for item in listing.get("Contents", [])]

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def moto_server(env: dict[str, str]) -> Iterator[str]:
    """moto's S3 server on a free loopback port (its endpoint), killed afterwards."""
    port = free_port()
    env = {**os.environ, **env}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """An S3 server that checks credentials: its first three requests (making a user, its policy and its
    key) are the only ones it takes without a valid signature. One private bucket."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as endpoint:
        iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="setup", aws_secret_access_key="setup",
                           region_name="us-east-1")
        iam.create_user(UserName="lamella")
        iam.put_user_policy(UserName="lamella", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="lamella")["AccessKey"]
        server = S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        server.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        yield server


@pytest.fixture(scope="module")
def archive() -> Iterator[S3]:
    """An S3 server as public archives run one: a bucket anyone may read, without credentials (moto, when it
    checks signatures, fails on unsigned requests: this one does not check them, but honours bucket policies)."""
    with moto_server({}) as endpoint:
        server = S3(endpoint, "curator", "curator-secret")
        client = server.client()
        client.create_bucket(Bucket=PUBLIC)  # type: ignore[attr-defined]
        client.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        client.put_bucket_policy(Bucket=PUBLIC, Policy=json.dumps({  # type: ignore[attr-defined]
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
                           "Resource": [f"arn:aws:s3:::{PUBLIC}", f"arn:aws:s3:::{PUBLIC}/*"]}]}))
        yield server


def lamella(s3: S3, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``lamella`` with this server's endpoint and the user's credentials, changed by ``env`` ("" removes one)."""
    variables = {**os.environ, **s3.env, **env}
    variables = {name: value for name, value in variables.items() if value}
    return subprocess.run([*LAMELLA, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, env=variables)


def lamella_here(s3: S3, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``lamella`` as above, run in this process (click's runner): a refusal costs no interpreter start-up.
    The variables, and the S3 settings the command makes current, are put back afterwards."""
    from click.testing import CliRunner

    from tiling.stores import set_s3_defaults
    from viewer.cli import main

    saved = dict(os.environ)
    try:
        for name, value in {**s3.env, **env}.items():
            if value:
                os.environ[name] = value
            else:
                os.environ.pop(name, None)
        result = CliRunner().invoke(main, list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        set_s3_defaults(None, None)
    return subprocess.CompletedProcess(["lamella", *args], result.exit_code, result.stdout, result.stderr)


@dataclass
class Imported:
    data_dir: Path
    volume: np.ndarray
    uri: str


@pytest.fixture(scope="module")
def imported(s3: S3, tmp_path_factory: pytest.TempPathFactory) -> Imported:
    """A small uint16 volume imported into the private bucket with ``lamella import --store``."""
    import tifffile

    folder = tmp_path_factory.mktemp("object-storage")
    volume = np.random.default_rng(11).integers(0, 60000, SHAPE, dtype=np.uint16)
    tifffile.imwrite(folder / "cells.tif", volume)
    data_dir = folder / "data"
    result = lamella(s3, "import", str(folder / "cells.tif"), "--dataset", "bucket", "--store",
                     f"s3://{BUCKET}/images", "--voxel-size", ",".join(map(str, VOXEL_NM)), "--quiet",
                     "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    return Imported(data_dir, volume, f"s3://{BUCKET}/images/bucket/cells.ome.zarr")


def registered(data_dir: Path) -> dict[str, dict[str, str]]:
    """Dataset name -> image name -> its store address, from the catalog itself."""
    from annotations.catalog import Catalog
    from annotations.db import make_engine, make_sessions, sqlite_url

    engine = make_engine(sqlite_url(data_dir))
    try:
        return {dataset.name: {image.name: image.uri for image in dataset.images}
                for dataset in Catalog(make_sessions(engine)).list_datasets()}
    finally:
        engine.dispose()


def test_import_into_a_bucket_leaves_a_complete_image_there_and_nothing_on_disk(s3: S3, imported: Imported) -> None:
    assert registered(imported.data_dir) == {"bucket": {"cells": imported.uri}}
    keys = s3.keys(BUCKET, "images/bucket/cells.ome.zarr/")
    assert "images/bucket/cells.ome.zarr/zarr.json" in keys
    assert "images/bucket/cells.ome.zarr/0/zarr.json" in keys and any("/0/c/" in key for key in keys)
    assert not any(key.endswith("/UPLOADING") for key in keys)  # the upload's marker is gone
    images = imported.data_dir / "images"
    assert not any(path.is_file() for path in images.rglob("*")) if images.exists() else True
    group = json.loads(s3.get(BUCKET, "images/bucket/cells.ome.zarr/zarr.json"))
    assert group["attributes"]["ome"]["version"] == "0.5"


def test_the_bucket_image_reads_back_with_tensorstore_and_zarr_python(s3: S3, imported: Imported) -> None:
    from tiling.stores import S3Config, S3Store

    store = S3Store(imported.uri, S3Config(s3.endpoint, "us-east-1", "environment"))
    os.environ.update(AWS_ACCESS_KEY_ID=s3.key, AWS_SECRET_ACCESS_KEY=s3.secret)  # tensorstore's "environment"
    try:
        level0 = ts.open({"driver": "zarr3", "kvstore": store.kvstore_spec("0")}).result().read().result()
    finally:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.pop(name, None)
    np.testing.assert_array_equal(level0, imported.volume)

    import obstore.store
    import zarr

    bucket = obstore.store.S3Store(BUCKET, prefix="images/bucket/cells.ome.zarr", endpoint=s3.endpoint,
                                   region="us-east-1", access_key_id=s3.key, secret_access_key=s3.secret,
                                   client_options={"allow_http": True})
    group = zarr.open_group(zarr.storage.ObjectStore(bucket, read_only=True), mode="r")
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert [d["path"] for d in multiscale["datasets"]][:2] == ["0", "1"]
    np.testing.assert_array_equal(group["0"][:], imported.volume)
    assert group["1"].shape == (40, 35, 45)  # z (8 nm) waits until x and y (4 nm) catch up


def test_a_bucket_image_is_served_like_one_on_disk(s3: S3, imported: Imported) -> None:
    """Precomputed chunks, the passthrough with byte ranges and a warped (thin-plate spline) volume."""
    add = lamella_here(s3, "add", imported.uri, "--dataset", "bucket", "--name", "again", "--data-dir",
                  str(imported.data_dir))
    assert add.returncode == 0, add.stderr
    transform = _store_identity_spline(imported.data_dir)
    server: Server = start_server(imported.data_dir, env=s3.env)
    try:
        base = "/api/datasets/bucket/images/cells"
        info = server.get(f"{base}/precomputed/info").json()
        assert info["data_type"] == "uint16" and info["scales"][0]["size"] == [90, 70, 40]
        chunk = server.get(f"{base}/precomputed/{info['scales'][0]['key']}/0-64_0-64_0-40")
        assert chunk.status_code == 200, chunk.text
        raw = np.frombuffer(chunk.content, "<u2").reshape(40, 64, 64)  # Fortran x, y, z: C-order z, y, x
        np.testing.assert_array_equal(raw, imported.volume[:40, :64, :64])

        shard_key = "images/bucket/cells.ome.zarr/0/c/0/0/0"
        stored = s3.get(BUCKET, shard_key)
        metadata = server.get(f"{base}/zarr/zarr.json")
        assert metadata.status_code == 200
        assert metadata.json() == json.loads(s3.get(BUCKET, "images/bucket/cells.ome.zarr/zarr.json"))
        for header, expected, first in (("bytes=10-99", stored[10:100], 10), ("bytes=-16", stored[-16:],
                                                                               len(stored) - 16),
                                        ("bytes=5-", stored[5:], 5)):
            ranged = server.get(f"{base}/zarr/0/c/0/0/0", headers={"Range": header})
            assert ranged.status_code == 206, ranged.text
            assert ranged.content == expected, header
            assert ranged.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(stored)}"
        whole = server.get(f"{base}/zarr/0/c/0/0/0")
        assert whole.content == stored and whole.headers["ETag"] == ranged.headers["ETag"]
        unsatisfiable = server.get(f"{base}/zarr/0/c/0/0/0", headers={"Range": f"bytes={len(stored)}-"})
        assert unsatisfiable.status_code == 416
        assert server.get(f"{base}/zarr/0/c/9/9/9").status_code == 404

        warped = server.get(f"/api/datasets/bucket/images/again/warped/{transform}/precomputed/info")
        assert warped.status_code == 200, warped.text
        scale = warped.json()["scales"][0]
        warped_chunk = server.get(f"/api/datasets/bucket/images/again/warped/{transform}/precomputed/"
                                  f"{scale['key']}/0-64_0-64_0-40")
        assert warped_chunk.status_code == 200, warped_chunk.text
        resampled = np.frombuffer(warped_chunk.content, "<u2").reshape(40, 64, 64)
        # An identity spline resamples voxel centres onto themselves.
        assert np.mean(np.abs(resampled.astype(int) - imported.volume[:40, :64, :64])) < 1.0
    finally:
        stop_server(server)
    # A server whose credentials the bucket refuses says so, for that image's data only.
    refused: Server = start_server(imported.data_dir, env={**s3.env, "AWS_SECRET_ACCESS_KEY": "wrong"})
    try:
        answer = refused.get("/api/datasets/bucket/images/cells/precomputed/info")
        assert answer.status_code == 503 and answer.json()["code"] == "store_denied", answer.text
        assert "access denied" in answer.json()["message"]
        assert refused.get("/api/datasets").status_code == 200
    finally:
        stop_server(refused)


def _store_identity_spline(data_dir: Path) -> int:
    """A thin-plate spline of image "again" onto "cells" (the dataset's reference) fitted to unmoved points."""
    from annotations.catalog import Catalog
    from annotations.db import make_engine, make_sessions, sqlite_url
    from annotations.transforms import Transforms
    from viewer.correlation import Correlation

    engine = make_engine(sqlite_url(data_dir))
    try:
        sessions = make_sessions(engine)
        points = np.random.default_rng(3).uniform([0, 0, 0], [350, 270, 310], (10, 3)).tolist()  # x, y, z nm
        fitted = Correlation(Catalog(sessions), Transforms(sessions)).fit_landmarks(
            "bucket", "again", points, points, fit="tps", reference="cells")
        assert fitted.record is not None
        return fitted.record.id
    finally:
        engine.dispose()


def test_a_public_bucket_is_read_anonymously(s3: S3, archive: S3, imported: Imported, tmp_path: Path) -> None:
    prefix = "images/bucket/cells.ome.zarr/"
    for key in s3.keys(BUCKET, prefix):
        data = s3.get(BUCKET, key)
        for bucket in (PUBLIC, BUCKET):
            archive.client().put_object(Bucket=bucket, Key="empiar/" + key[len(prefix):], Body=data)  # type: ignore[attr-defined]
    anonymous = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_ENDPOINT_URL": archive.endpoint}
    result = lamella_here(s3, "add", f"s3://{PUBLIC}/empiar", "--dataset", "archive", "--name", "cells",
                     "--data-dir", str(tmp_path), **anonymous)
    assert result.returncode == 0, result.stderr
    # The endpoint may come from Lamella's own setting instead of the AWS variables.
    again = lamella_here(s3, "add", f"s3://{PUBLIC}/empiar", "--dataset", "archive", "--name", "setting",
                    "--data-dir", str(tmp_path), **{**anonymous, "AWS_ENDPOINT_URL": "",
                                                    "LAMELLA_S3_ENDPOINT": archive.endpoint})
    assert again.returncode == 0, again.stderr
    # Without credentials, a bucket that is not public refuses.
    private = lamella_here(s3, "add", f"s3://{BUCKET}/empiar", "--dataset", "archive", "--data-dir", str(tmp_path),
                      **anonymous)
    assert_one_line_error(private, "access denied")
    assert registered(tmp_path) == {"archive": {"cells": f"s3://{PUBLIC}/empiar",
                                                "setting": f"s3://{PUBLIC}/empiar"}}


def test_refusals_are_one_line_and_register_nothing(s3: S3, imported: Imported, tmp_path: Path) -> None:
    s3.client().put_object(Bucket=BUCKET, Key="notes/readme.txt", Body=b"not an image")  # type: ignore[attr-defined]
    s3.client().put_object(Bucket=BUCKET, Key="plain/zarr.json",  # type: ignore[attr-defined]
                           Body=json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode())
    data = ["--data-dir", str(tmp_path)]
    cases = [
        (("add", imported.uri, "--dataset", "x"), {"AWS_SECRET_ACCESS_KEY": "wrong"}, ["access denied"]),
        (("add", imported.uri, "--dataset", "x"), {"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY"}, ["access denied"]),
        (("add", "s3://no-such-bucket/cells.ome.zarr", "--dataset", "x"), {}, ["bucket does not exist"]),
        (("add", f"s3://{BUCKET}/notes", "--dataset", "x"), {}, ["no OME-Zarr group"]),
        (("add", f"s3://{BUCKET}/plain", "--dataset", "x"), {}, ["multiscales"]),
        (("add", "s3://Not_A_Bucket/x", "--dataset", "x"), {}, ["not an s3://bucket/path"]),
        (("add", imported.uri, "--dataset", "x"), {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"},
         ["cannot read", "connect"]),
    ]
    for args, env, words in cases:
        assert_one_line_error(lamella_here(s3, *args, *data, **env), *words)
    assert registered(tmp_path) == {}
    bad_setting = lamella_here(s3, "add", imported.uri, "--dataset", "x", *data, LAMELLA_S3_ENDPOINT="ftp://x")
    assert_one_line_error(bad_setting, "s3_endpoint must be an http(s) URL")


def test_a_failed_import_into_a_bucket_leaves_nothing(s3: S3, imported: Imported, tmp_path: Path) -> None:
    source = imported.data_dir.parent / "cells.tif"
    into = ["--dataset", "failed", "--quiet", "--data-dir", str(tmp_path)]
    denied = lamella_here(s3, "import", str(source), "--store", f"s3://{BUCKET}/other", *into,
                     AWS_SECRET_ACCESS_KEY="wrong")
    assert_one_line_error(denied, "access denied")
    missing = lamella_here(s3, "import", str(source), "--store", "s3://no-such-bucket/images", *into)
    assert_one_line_error(missing, "bucket does not exist")
    taken = lamella_here(s3, "import", str(source), "--store", f"s3://{BUCKET}/images", "--dataset", "bucket",
                         "--quiet", "--data-dir", str(tmp_path))  # a new catalog; the bucket holds that image
    assert_one_line_error(taken, "already holds an image")
    assert registered(tmp_path) == {}
    assert s3.keys(BUCKET, "other/") == []
    assert not any(path.is_file() for path in (tmp_path / "images").rglob("*"))


def test_an_interrupted_upload_is_no_image_until_resumed(s3: S3, imported: Imported, tmp_path: Path) -> None:
    """Objects are uploaded with the root metadata last: a half upload is no OME-Zarr, and resumes."""
    from tiling.object_storage import MARKER, prepare_upload, upload_image
    from tiling.pyramid import PyramidOptions, write_pyramid
    from tiling.sources import ArraySource
    from tiling.stores import S3Config, S3Store

    built = tmp_path / "small.ome.zarr"
    write_pyramid(ArraySource(imported.volume[:8, :32, :32]), built, voxel_size=VOXEL_NM,
                  options=PyramidOptions(chunk=16, name="small"))
    store = S3Store(f"s3://{BUCKET}/half/small.ome.zarr", S3Config(s3.endpoint, "us-east-1", "environment"))
    os.environ.update(AWS_ACCESS_KEY_ID=s3.key, AWS_SECRET_ACCESS_KEY=s3.secret)
    try:
        prepare_upload(store, resume=False)
        calls = 0

        def stop_after_two(_size: int) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            upload_image(built, store, progress=stop_after_two)
        half = s3.keys(BUCKET, "half/small.ome.zarr/")
        assert f"half/small.ome.zarr/{MARKER}" in half and "half/small.ome.zarr/zarr.json" not in half
        refused = lamella_here(s3, "add", store.uri, "--dataset", "x", "--data-dir", str(tmp_path / "data"))
        assert_one_line_error(refused, "no OME-Zarr group")
        with pytest.raises(Exception, match="--resume"):
            prepare_upload(store, resume=False)
        prepare_upload(store, resume=True)
        upload_image(built, store, resume=True)
        from tiling.omezarr import make_context, open_volume

        volume = asyncio.run(open_volume(store, make_context(16 << 20)))
        data = asyncio.run(volume.read(0, (slice(0, 8), slice(0, 32), slice(0, 32))))
        np.testing.assert_array_equal(data[0], imported.volume[:8, :32, :32])
        assert f"half/small.ome.zarr/{MARKER}" not in s3.keys(BUCKET, "half/")
    finally:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.pop(name, None)


def test_an_import_interrupted_while_uploading_resumes(
    s3: S3, imported: Imported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during the upload keeps the built image and what was uploaded; ``--resume`` finishes it."""
    from tiling import object_storage

    original = object_storage._write_all

    def interrupted(folder: Path, store: object, kvstore: object, keys: list[str], progress: object) -> int:
        original(folder, store, kvstore, keys[:2], progress)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    source = str(imported.data_dir.parent / "cells.tif")
    command = ["import", source, "--dataset", "r", "--store", f"s3://{BUCKET}/resumed", "--quiet",
               "--data-dir", str(tmp_path)]
    prefix = "resumed/r/cells.ome.zarr/"
    with monkeypatch.context() as patch:
        patch.setattr(object_storage, "_write_all", interrupted)
        stopped = lamella_here(s3, *command)
    assert stopped.returncode == 130 and "--resume" in stopped.stderr
    assert sorted(s3.keys(BUCKET, prefix))[-1] == prefix + object_storage.MARKER
    assert len(s3.keys(BUCKET, prefix)) == 3 and prefix + "zarr.json" not in s3.keys(BUCKET, prefix)
    assert (tmp_path / "images" / ".uploads" / "r" / "cells.ome.zarr" / "zarr.json").is_file()
    assert registered(tmp_path) == {}
    assert_one_line_error(lamella_here(s3, *command), "unfinished upload", "--resume")
    resumed = lamella_here(s3, *command, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert registered(tmp_path) == {"r": {"cells": f"s3://{BUCKET}/{prefix.rstrip('/')}"}}
    keys = s3.keys(BUCKET, prefix)
    assert prefix + "zarr.json" in keys and prefix + object_storage.MARKER not in keys
    assert sorted(key[len(prefix):] for key in keys) == sorted(
        key[len("images/bucket/cells.ome.zarr/"):] for key in s3.keys(BUCKET, "images/bucket/cells.ome.zarr/"))
    assert not (tmp_path / "images" / ".uploads" / "r").exists()


def test_bioimage_archive_layouts_are_registered_from_the_s3_server(s3: S3, archive: S3, tmp_path: Path) -> None:
    """The BioImage Archive's OME-Zarr layouts (Zarr v3 with OME 0.5, Zarr v2 with 0.4 in µm, bioformats2raw) in a
    public bucket of the local S3 server: registered from the archive's records by their HTTP addresses there,
    and one by its ``s3://`` address without credentials."""
    from tests.test_entries import _bioformats2raw, _write, add_bia, bia_images
    from tests.test_entries import catalog as entry_catalog

    folder = tmp_path / "bia"
    folder.mkdir()
    _write(folder / "fib-sem.ome.zarr", "0.5", (30.0, 8.0, 8.0), seed=1)
    _write(folder / "airyscan.ome.zarr", "0.4", (0.2, 0.04, 0.04), unit="micrometer", seed=2)
    _bioformats2raw(folder / "overview.ome.zarr", (50.0, 20.0, 20.0))
    client = archive.client()
    for path in folder.rglob("*"):
        if path.is_file():
            client.put_object(Bucket=PUBLIC, Key=f"S-BIAD1234/{path.relative_to(folder)}",  # type: ignore[attr-defined]
                              Body=path.read_bytes())
    base = f"{archive.endpoint}/{PUBLIC}/S-BIAD1234"  # path-style addresses, as the archive's records give them
    result = add_bia(tmp_path, bia_images(base))
    assert result.exit_code == 0, result.output
    images = {image.name: image for image in entry_catalog(tmp_path / "lamella").get_dataset("s-biad1234").images}
    assert sorted(images) == ["airyscan", "fib-sem", "overview"]
    assert (images["fib-sem"].zarr_format, images["fib-sem"].ome_version) == (3, "0.5")
    assert (images["airyscan"].zarr_format, images["airyscan"].ome_version) == (2, "0.4")
    assert images["airyscan"].voxel_size_nm == pytest.approx([200.0, 40.0, 40.0])
    assert images["overview"].uri == f"{base}/overview.ome.zarr/0"
    anonymous = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_ENDPOINT_URL": archive.endpoint}
    added = lamella_here(s3, "add", f"s3://{PUBLIC}/S-BIAD1234/overview.ome.zarr", "--dataset", "overview",
                         "--data-dir", str(tmp_path / "s3"), **anonymous)
    assert added.returncode == 0, added.stderr
    [(_, uri)] = registered(tmp_path / "s3")["overview"].items()
    assert uri == f"s3://{PUBLIC}/S-BIAD1234/overview.ome.zarr/0"
