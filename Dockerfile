# Lamella server image: the wheel, built here from the sdist, installed into a plain Python and run by an
# unprivileged user, with the catalog and imported images in the volume /data. No source tree in the image.
# Build with `make image` (or `docker build -t lamella .`); tests/test_package.py runs the same steps
# (sdist, wheel, a fresh environment, the health check below) where no Docker engine is at hand.

# Swagger UI for /api/docs, the package alone from the npm registry, as `make` vendors it.
FROM node:22-bookworm-slim AS swagger-ui
ARG SWAGGER_UI=5.35.0
WORKDIR /npm
RUN npm pack --silent swagger-ui-dist@${SWAGGER_UI} \
 && mkdir ui \
 && tar -xzf swagger-ui-dist-${SWAGGER_UI}.tgz -C ui --strip-components=1 \
      package/swagger-ui-bundle.js package/swagger-ui.css package/LICENSE package/NOTICE

# The sdist, then the wheel built from it.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY tiling ./tiling
COPY annotations ./annotations
COPY viewer ./viewer
COPY static ./static
COPY --from=swagger-ui /npm/ui ./static/vendor/swagger-ui
RUN pip install build && python -m build --outdir /dist .

# The server: the wheel and its dependencies.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist/*.whl /tmp/wheels/
RUN pip install /tmp/wheels/*.whl \
 && rm -r /tmp/wheels \
 && useradd --create-home --uid 10001 lamella \
 && mkdir /data && chown lamella /data
USER lamella
WORKDIR /home/lamella
VOLUME ["/data"]
EXPOSE 8080
# Inside the container Lamella listens on all interfaces: publish the port explicitly
# (-p 127.0.0.1:8080:8080). Any LAMELLA_* setting can be given with -e.
ENV LAMELLA_DATA_DIR=/data LAMELLA_HOST=0.0.0.0 LAMELLA_PORT=8080 LAMELLA_PROCESSES=2
# Healthy while the server answers the catalog API (which reads the database).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/datasets' % os.environ['LAMELLA_PORT'], timeout=4)"]
CMD ["lamella", "serve"]
