# syntax=docker/dockerfile:1.7
# The bundled engine (python -m selfhost_engine serve) for GPU nodes. PyPI's torch wheels carry the
# CUDA runtime libraries, so the image needs only the node's NVIDIA driver (NVIDIA container toolkit).
# Build from the repository root:  docker build -f deploy/engine.Dockerfile -t hybrid-gateway-engine:0.1.0 .
# Base images are pinned by exact tag; pin them by digest in your registry for reproducible builds.

FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir torch==2.13.0
COPY . .
RUN pip install --no-cache-dir -c /tmp/constraints.txt . \
 && python -m compileall -q /opt/venv/lib/python3.11/site-packages

FROM python:3.11.13-slim-bookworm AS runtime
RUN groupadd --gid 10001 engine && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin engine
COPY --from=build /opt/venv /opt/venv
# DL3064 flags TOKENIZERS_PARALLELISM by its name; no secret lives in this image.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    HOME=/tmp
USER 10001:10001
EXPOSE 8000
# The model directory (transformers format) is mounted at /models/model.
ENTRYPOINT ["python", "-m", "selfhost_engine"]
CMD ["serve", "--model", "/models/model", "--host", "0.0.0.0", "--port", "8000"]
