# The worker image: transcode-worker and queue-files on Debian 12 with the
# GStreamer 1.22 plugin sets (base, good, bad, ugly, libav).
#
#   docker build -t transcode-worker .
#   docker run --rm --env-file .env transcode-worker            # transcode-worker run
#   docker run --rm --env-file .env transcode-worker check-config
#
# The runtime package list must stay the GStreamer runtime packages that
# scripts/install-deps installs (what the tests run against): scripts/check-deploy
# compares them.

# --- build --------------------------------------------------------------------
FROM rust:1-bookworm AS build

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        pkg-config \
        libssl-dev \
        libgstreamer1.0-dev \
        libgstreamer-plugins-base1.0-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN cargo build --release --locked -p transcode-worker -p queue-files --bins \
    && install -D -m 0755 -t /out target/release/transcode-worker target/release/queue-files

# --- runtime ------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        gstreamer1.0-plugins-base \
        gstreamer1.0-plugins-good \
        gstreamer1.0-plugins-bad \
        gstreamer1.0-plugins-ugly \
        gstreamer1.0-libav \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user; its home holds the GStreamer registry cache, and
# per-job scratch folders go to /tmp (mount a volume there for large videos).
RUN useradd --system --uid 10001 --user-group --create-home \
        --home-dir /var/lib/transcode-worker --shell /usr/sbin/nologin transcode

COPY --from=build /out/transcode-worker /out/queue-files /usr/local/bin/

USER transcode
WORKDIR /var/lib/transcode-worker

# SIGTERM: take no new job, let the running one finish for up to
# TRANSCODE_WORKER__DRAIN_TIMEOUT, give it back, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["transcode-worker"]
CMD ["run"]
