"""Peer server for benchmarks/serve_chunks.py: Neuroglancer's own Python server over one array.

Run as ``python neuroglancer_peer.py VOLUME.npy READY.json``. Loads the (z, y, x) uint8
array, exposes it as a ``LocalVolume`` (JPEG, 64³ chunks) on 127.0.0.1 and writes
``{"url": ..., "key": ...}`` to READY.json, then serves until terminated. Chunk URLs are
``<url>/neuroglancer/jpeg/<key>/1,1,1/<z0>,<y0>,<x0>/<z1>,<y1>,<x1>`` (array order).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import neuroglancer
import neuroglancer.server
import numpy as np


def main(volume_path: Path, ready_path: Path) -> None:
    data = np.load(volume_path)
    neuroglancer.set_server_bind_address("127.0.0.1")
    viewer = neuroglancer.Viewer()
    volume = neuroglancer.LocalVolume(
        data=data,
        dimensions=neuroglancer.CoordinateSpace(names=["z", "y", "x"], units="nm", scales=[8, 8, 8]),
        volume_type="image",
        encoding="jpeg",  # what its info advertises; the URL's data_format picks the encoder
        max_voxels_per_chunk_log2=18,  # 2^18 voxels = 64³ for an isotropic 3D chunk layout
    )
    with viewer.txn() as state:
        state.layers["em"] = neuroglancer.ImageLayer(source=volume)
    # The volume is registered with the viewer when the state above is serialized.
    key = viewer.volume_manager.get_volume_key(volume)
    partial = ready_path.with_suffix(".partial")
    partial.write_text(json.dumps({"url": neuroglancer.server.get_server_url(), "key": key}))
    partial.rename(ready_path)  # atomic: the benchmark never reads half a file
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    neuroglancer.server.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
