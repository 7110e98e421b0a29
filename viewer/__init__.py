"""The web layer: app factory, route table, handlers, viewer sessions and the CLI."""

import os

# Lamella spreads work over blocks and requests, not inside BLAS calls: OpenBLAS's own threads
# would only spin (about 0.1 s of CPU at start-up, measured). Set before numpy loads it; an
# explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
