# agg in one container: the supervisor and every process (`agg run`).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY setup.py README.md ./
COPY agg ./agg
COPY conf ./conf
COPY bin ./bin
RUN pip install --no-cache-dir . \
    && groupadd --gid 1000 agg \
    && useradd --uid 1000 --gid agg --no-create-home --shell /usr/sbin/nologin agg \
    && mkdir -p /data \
    && chown agg:agg /data

USER 1000:1000

# Inside a container agg listens on every interface; ipc sockets stay off the volume.
ENV AGG_DATA_DIR=/data \
    AGG_RUN_DIR=/tmp/agg-run \
    AGG_HTTP_HOST=0.0.0.0 \
    AGG_HTTP_PORT=8080 \
    AGG_INGEST_ENDPOINT=tcp://0.0.0.0:5555

VOLUME ["/data"]
EXPOSE 8080 5555

# GET /health on the port of the configuration (AGG_HTTP_PORT or conf/), not a fixed 8080.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-m", "agg.probe"]

CMD ["agg", "run"]
