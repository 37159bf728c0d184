# game-server (and the `bots` load generator): stable toolchain only, non-root runtime.
#
# Build from the repository root (BuildKit reads game-server.Dockerfile.dockerignore beside this file):
#   docker build -f deploy/images/game-server.Dockerfile -t kernelsight/game-server:0.1.0 .
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Every workspace member must be present for cargo to load the workspace; only the game server
# and its pool are compiled (the agent's eBPF build script does not run).
COPY Cargo.toml Cargo.lock ./
COPY .cargo/ .cargo/
COPY agent/ agent/
COPY agent-ebpf/ agent-ebpf/
COPY game-server/ game-server/
COPY xtask/ xtask/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p game-server --bin game-server --bin bots \
 && install -D -m 0755 target/release/game-server /out/game-server \
 && install -D -m 0755 target/release/bots /out/bots \
 && install -d -o 10001 -g 10001 /out/data

FROM ${RUNTIME_IMAGE}
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/game-server /out/bots /usr/local/bin/
COPY --from=build --chown=10001:10001 /out/data /var/lib/game-server
ENV GAME_LISTEN=0.0.0.0:7000 \
    GAME_DATA_DIR=/var/lib/game-server
EXPOSE 7000
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/game-server"]
