# Lamella server image: Python 3.11, the project, and a data volume at /data.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY tiling ./tiling
COPY annotations ./annotations
COPY viewer ./viewer
COPY static ./static
# Editable install keeps static/ beside the packages, where the app looks for it.
RUN pip install -e . && useradd --create-home lamella && mkdir /data && chown lamella /data
USER lamella
VOLUME ["/data"]
EXPOSE 8080
ENV LAMELLA_DATA_DIR=/data
# Bind all interfaces inside the container; publish the port explicitly (-p 127.0.0.1:8080:8080).
CMD ["lamella", "serve", "--demo", "--host", "0.0.0.0", "--port", "8080", "--processes", "2"]
