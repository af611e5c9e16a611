# ISDR, the InferenceServer DICOM Relay. Build with ./build.sh, run as in run.sh.example.
FROM python:3.11-slim

# Defaults that work in a container; every variable is described in docs/configuration.md.
# API_TOKEN is empty here (no access but /healthz and /readyz): a token is given at run time.
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SCP_HOSTNAME=0.0.0.0 \
    SCP_PORT=11112 \
    SCP_AE_TITLE=DICOM_NODE \
    INCOMING_DIR=/data/incoming \
    PYNETDICOM_LOG_LEVEL=none \
    ALLOWED_CALLING_AE_TITLES= \
    ALLOWED_PEERS= \
    REQUIRE_CALLED_AE_TITLE=false \
    SCP_TLS_CERT_FILE= \
    SCP_TLS_KEY_FILE= \
    SCP_TLS_CLIENT_CA_FILE= \
    FINGERPRINT_DIR=/CONFIGURATION/FINGERPRINTS \
    CERT_FILE=/CONFIGURATION/CERTS/cert.crt \
    POST_INTERVAL=1 \
    POST_AFTER=10 \
    POST_TIMEOUT=60 \
    DELETE_ON_POST=true \
    GET_INTERVAL=15 \
    GET_TIMEOUT=86400 \
    POST_MAX_ATTEMPTS=10 \
    POST_RETRY_DELAY=5 \
    POST_AMBIGUOUS_RESENDS=2 \
    ASK_INFERENCE_SERVER_TO_DELETE_TASK=true \
    DATA_DIR=/data \
    DATABASE_URL= \
    LOG_LEVEL=INFO \
    LOG_FORMAT=text \
    FSYNC_WRITES=false \
    MIN_FREE_DISK_MB=1024 \
    MAX_PDU_SIZE=131072 \
    MAX_INSTANCE_MB=2048 \
    SCP_ASSOCIATE_TIMEOUT=10 \
    SCP_NETWORK_TIMEOUT=120 \
    SCP_MAX_ASSOCIATIONS=64 \
    SCP_MAX_CONNECTIONS=128 \
    SCP_MAX_CONNECTIONS_PER_PEER=32 \
    RECEIVER=pynetdicom \
    WATCH_INCOMING=true \
    STOP_TIMEOUT=7 \
    GET_WORKERS=4 \
    GET_WORKERS_PER_SERVER=2 \
    TRANSFER_MIN_RATE_KB=100 \
    OUTPUT_MAX_MB=4096 \
    OUTPUT_MAX_FILES=20000 \
    DELIVERY_TIMEOUT=10 \
    DELIVERY_WORKERS=4 \
    DELIVERY_ASSOCIATIONS=1 \
    DELIVERY_RETRY_DELAY=10 \
    DELIVERY_MAX_ATTEMPTS=30 \
    JOB_FILES_RETENTION_HOURS=168 \
    HTTP_HOSTNAME=127.0.0.1 \
    HTTP_PORT=8124 \
    HTTP_TLS_CERT_FILE= \
    HTTP_TLS_KEY_FILE= \
    API_TOKEN= \
    API_TOKEN_FILE= \
    HEARTBEAT_INTERVAL=60 \
    USERS_FILE=/CONFIGURATION/users.json \
    SENDERS_FILE=/CONFIGURATION/senders.json \
    SERVERS_FILE=/CONFIGURATION/servers.json \
    POOL_AFFINITY_MINUTES=60 \
    SERVER_DOWN_AFTER=3 \
    SENDER_FALLBACK_PORT=0 \
    SESSION_HOURS=12

WORKDIR /opt/isdr
COPY constraints.txt pyproject.toml README.md ./
COPY src ./src
COPY CONFIGURATION /CONFIGURATION
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home isdr \
    && mkdir -p /data/incoming \
    && chown -R isdr:isdr /data

# Port 104, as the original relay listened, works as user 10001: the Python that runs
# the relay may bind ports below 1024 (cap_net_bind_service, a file capability; no other
# privilege). setcap comes from libcap2-bin, installed for this step only. Not pinned:
# the package is gone again at the end of the step.
# hadolint ignore=DL3008
RUN python="$(readlink -f /usr/local/bin/python3)" \
    && apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && setcap cap_net_bind_service=+ep "$python" \
    && [ -n "$(getcap "$python")" ] \
    && apt-get purge -y --auto-remove libcap2-bin \
    && rm -rf /var/lib/apt/lists/*

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# The default SCP_PORT; with SCP_PORT=104 the relay listens there (see above).
EXPOSE 11112

# A real C-ECHO against the relay's own Store SCP.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["isdr", "echo"]

# SIGTERM: C-STOREs in flight finish (STOP_TIMEOUT), then the relay exits, within
# docker stop's 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["isdr"]
CMD ["serve"]
