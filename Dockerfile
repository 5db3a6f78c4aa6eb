# wechat-fanout in a container.
#
#   docker build --build-arg COMMIT="$(git rev-parse --short HEAD)" -t wechat-fanout .
#   docker run -p 8080:8080 -p 127.0.0.1:9090:9090 \
#     -v "$PWD/config:/etc/wechat-fanout:ro" -v wechat-fanout-data:/var/lib/wechat-fanout \
#     -e WECHAT_FANOUT_CONFIG=/etc/wechat-fanout/example.toml wechat-fanout
#
# Publish 8080 (WeChat's callbacks, behind your TLS terminator) and keep 9090 (health, metrics,
# dead letters; no authentication) private. The image runs the same release build as CI.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /build
# Dependencies first, against stub sources: this layer is reused until Cargo.toml or Cargo.lock
# change. benches/ is copied because Cargo.toml declares a bench target that must exist.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY benches benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY config config
COPY console console
COPY src src
# `wechat-fanout --version` names the commit it was built from when it is given (the build has
# no .git to read it from).
ARG COMMIT=""
ENV WECHAT_FANOUT_COMMIT=${COMMIT}
# COPY keeps the sources' older mtimes; touch them so cargo rebuilds over the stubs.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/wechat-fanout /usr/local/bin/wechat-fanout

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/wechat-fanout \
        --shell /usr/sbin/nologin wechat-fanout \
    && install -d -o wechat-fanout -g wechat-fanout -m 0750 /var/lib/wechat-fanout
COPY --from=build /usr/local/bin/wechat-fanout /usr/local/bin/wechat-fanout
# The image's own config is the example; mount your config/ over /etc/wechat-fanout and point
# WECHAT_FANOUT_CONFIG at the file in it.
COPY config/ /etc/wechat-fanout/
# Inside a container the listeners must not be on loopback, and the store lives on the volume.
# An admin listener off loopback needs admin.token (or admin.token_env): pass it at run time.
# These environment variables override the same keys of the config file.
ENV WECHAT_FANOUT_CONFIG=/etc/wechat-fanout/example.toml \
    WECHAT_FANOUT_SERVER__LISTEN=0.0.0.0:8080 \
    WECHAT_FANOUT_ADMIN__LISTEN=0.0.0.0:9090 \
    WECHAT_FANOUT_STORE__PATH=/var/lib/wechat-fanout/wechat-fanout.db \
    WECHAT_FANOUT_LOG__FORMAT=json
USER wechat-fanout
VOLUME ["/var/lib/wechat-fanout"]
EXPOSE 8080 9090
# Readiness, not mere liveness: the store must commit a write (exit 0/1, no curl in the image).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["wechat-fanout", "healthcheck", "--ready"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["wechat-fanout"]
CMD ["serve"]
