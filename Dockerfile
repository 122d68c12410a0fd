# syntax=docker/dockerfile:1
#
# tirreno-shipper container image.
#
#   docker build -t tirreno-shipper .
#   docker run -d --name tirreno-shipper --group-add adm -p 127.0.0.1:9108:9108 \
#     --add-host host.docker.internal:host-gateway \
#     -v /etc/tirreno-shipper/config.yaml:/etc/tirreno-shipper/config.yaml:ro \
#     -v /var/log/nginx:/var/log/nginx:ro \
#     -v tirreno-spool:/var/lib/tirreno-shipper \
#     -e TIRRENO_API_KEY \
#     tirreno-shipper
#
# The configuration is read from /etc/tirreno-shipper/config.yaml (mount it; no
# config is baked into the image). It must set `state_dir: /var/lib/tirreno-shipper`
# (the default) and `metrics: {listen: "0.0.0.0:9108"}`: the HEALTHCHECK below and
# Kubernetes probes ask /healthz on port 9108. README.md, "Run it in a container",
# says how to reach services on the host and who must own the spool volume (10001).
#
# The project's tests check this file statically (tests/test_packaging.py): the
# machines its CI runs on have a Docker client but no Docker engine, so
# `docker build` is not run there.

# --- builder: a self-contained virtualenv with the database drivers ----------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/tirreno-shipper
WORKDIR /src
# README.md is the package's long description: setuptools needs it to build.
COPY pyproject.toml README.md ./
COPY tirreno_shipper/ tirreno_shipper/
RUN /opt/tirreno-shipper/bin/pip install ".[postgres,mysql]" \
    && /opt/tirreno-shipper/bin/tirreno-shipper --version

# --- runtime: slim Python, the venv, a fixed non-root user --------------------
FROM python:3.11-slim

LABEL org.opencontainers.image.title="tirreno-shipper" \
      org.opencontainers.image.description="Tail nginx and Apache access logs and ship each meaningful request as an event to a tirreno sensor" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH="/opt/tirreno-shipper/bin:${PATH}"

# A numeric uid, so Kubernetes' runAsNonRoot can check it without runAsUser.
# To read host logs that are root:adm 0640, run with `--group-add adm` (gid 4).
RUN groupadd --system --gid 10001 tirreno \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/tirreno-shipper --shell /usr/sbin/nologin tirreno \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/tirreno-shipper \
    && install -d -m 0755 /etc/tirreno-shipper

COPY --from=builder /opt/tirreno-shipper /opt/tirreno-shipper

USER 10001:10001
WORKDIR /var/lib/tirreno-shipper
# spool.sqlite: the checkpoints and the events not yet delivered. Keep it on a
# volume, or a restarted container re-reads from start_at and loses the backlog.
VOLUME ["/var/lib/tirreno-shipper"]
# /metrics and /healthz
EXPOSE 9108

# SIGTERM: stop reading, commit checkpoints, give in-flight requests
# shutdown_grace (10 s), exit 0. Give `docker stop` more than that: `-t 20`.
STOPSIGNAL SIGTERM
# slim has no curl; the venv's Python asks instead. A 503 raises HTTPError: exit 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=3).status==200 else 1)"]

ENTRYPOINT ["tirreno-shipper"]
CMD ["run", "-c", "/etc/tirreno-shipper/config.yaml"]
