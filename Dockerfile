# snapback container image: `snapback run` as a non-root user.
#
#   docker build -t snapback --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
#   docker run -d --name snapback \
#     -v /srv/snapback/config:/etc/snapback:ro \
#     -v snapback-state:/var/lib/snapback \
#     -e PREMIUM_KEY -e BACKUP_KEY \
#     snapback
#
# See docs/operations.md ("In a container").

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
WORKDIR /src
# Dependencies first: a code change does not rebuild them. (rusqlite builds SQLite with the
# image's C compiler; TLS is rustls, so no OpenSSL is needed.)
# The manifest declares the benchmark target, so a stub of it is needed too.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/apply.rs \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
# Shown by the snapback_build_info metric; empty: "unknown".
ARG GIT_COMMIT=""
ENV SNAPBACK_GIT_COMMIT=${GIT_COMMIT}
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && strip target/release/snapback

FROM debian:${DEBIAN}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/snapback \
        --shell /usr/sbin/nologin snapback \
    && mkdir -p /etc/snapback /var/lib/snapback \
    && chown snapback:snapback /var/lib/snapback \
    && chmod 0700 /var/lib/snapback
COPY --from=build /src/target/release/snapback /usr/local/bin/snapback
# Completions and man pages, generated from the CLI definition (README "For packagers").
RUN mkdir -p /usr/share/bash-completion/completions /usr/share/zsh/vendor-completions \
        /usr/share/fish/vendor_completions.d /usr/share/man/man1 \
    && snapback completions bash > /usr/share/bash-completion/completions/snapback \
    && snapback completions zsh > /usr/share/zsh/vendor-completions/_snapback \
    && snapback completions fish > /usr/share/fish/vendor_completions.d/snapback.fish \
    && snapback man /usr/share/man/man1
USER 10001:10001
ENV SNAPBACK_CONFIG=/etc/snapback/snapback.toml
# Config (read-only is fine) and state (must persist: it holds the checkpoints that let an
# interrupted cycle resume). Keep control_socket under state_dir (the default).
VOLUME ["/etc/snapback", "/var/lib/snapback"]
# metrics_listen, if set to 0.0.0.0:9464 in the config.
EXPOSE 9464
# Healthy while the daemon answers on its control socket.
HEALTHCHECK --interval=60s --timeout=15s --start-period=30s --retries=3 \
    CMD ["snapback", "status", "--require-daemon"]
# snapback handles SIGTERM/SIGINT/SIGHUP itself, also as PID 1. Give `docker stop` more
# time than shutdown_grace: docker stop --time 45.
STOPSIGNAL SIGTERM
ENTRYPOINT ["snapback"]
CMD ["run"]
