# The cascade router image: `cascade serve` (and the other `cascade` commands) on a slim Python.
#   docker build -t cascade-router:0.1.0 .
#   docker run --rm -p 50051:50051 cascade-router:0.1.0      # packaged v7 config
# The server image holds the server package only. The mock backends (the `cascade-dev`
# distribution in dev/) are a separate target, for trying the router without models:
#   docker build --target mock-backends -t cascade-router-dev:0.1.0 .
# Kubernetes manifests: k8s/ (docs/kubernetes.md). tests/k8s checks this file against them.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- build: the package and its dependencies into a virtual environment ------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/cascade
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extproc ./extproc
RUN /opt/cascade/bin/pip install . \
 && /opt/cascade/bin/cascade check-config /opt/cascade/lib/python3*/site-packages/extproc/defaults/cascade.yaml

# ---- mock backends: the server's environment plus the development distribution -----------
FROM build AS build-dev
COPY dev ./dev
RUN /opt/cascade/bin/pip install ./dev

FROM ${PYTHON_IMAGE} AS mock-backends
RUN groupadd --system --gid 10001 cascade \
 && useradd --system --uid 10001 --gid cascade --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin cascade
COPY --from=build-dev /opt/cascade /opt/cascade
ENV PATH=/opt/cascade/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["cascade"]
CMD ["mock-backend", "--host", "0.0.0.0", "--port", "8000"]

# ---- runtime: the environment only, no compilers, no pip cache, a non-root user ----------
FROM ${PYTHON_IMAGE} AS server
LABEL org.opencontainers.image.title="cascade-router" \
      org.opencontainers.image.description="Envoy ext_proc server routing each LLM chat request to the cheapest capable model tier" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 cascade \
 && useradd --system --uid 10001 --gid cascade --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin cascade
COPY --from=build /opt/cascade /opt/cascade
ENV PATH=/opt/cascade/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# gRPC (ext_proc + grpc.health.v1) and Prometheus metrics.
EXPOSE 50051 9464
ENTRYPOINT ["cascade"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464", "--log-format", "json"]
