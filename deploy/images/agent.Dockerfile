# kernelsight-agent: the node agent with its eBPF object embedded.
#
# agent/build.rs builds agent-ebpf for bpfel-unknown-none with the toolchain named `nightly`
# (-Z build-std=core, rust-src) and bpf-linker, and the agent embeds the object; so the builder
# stage needs both, exactly as `cargo xtask setup` installs them (xtask/src/setup.rs).
#
# Build from the repository root (BuildKit reads agent.Dockerfile.dockerignore beside this file):
#   docker build -f deploy/images/agent.Dockerfile -t kernelsight/agent:0.1.0 .
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS toolchain
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The nightly whose libLLVM (22.x) bpf-linker links against. build.rs asks rustup for
# `+nightly`, so the pinned toolchain is also made reachable under that name.
ARG NIGHTLY=nightly-2026-05-20
ARG BPF_LINKER_VERSION=0.13.0
ARG LLVM_FEATURE=llvm-22
RUN rustup toolchain install "${NIGHTLY}" --profile minimal --component rust-src \
 && host="$(rustc -vV | sed -n 's/^host: //p')" \
 && if [ "${NIGHTLY}" != nightly ]; then \
      ln -s "${RUSTUP_HOME}/toolchains/${NIGHTLY}-${host}" "${RUSTUP_HOME}/toolchains/nightly-${host}"; \
    fi \
 && rustc +nightly --version
# bpf-linker built against nightly's own libLLVM (no system LLVM): LLVM_PREFIX/lib holds the
# library under both its generic and its versioned name, so the linker finds it at run time too.
RUN sysroot="$(rustc +nightly --print sysroot)" \
 && real="$(find "${sysroot}/lib" -maxdepth 1 -name 'libLLVM.so.*' -print -quit)" \
 && test -n "${real}" \
 && mkdir -p /opt/llvm/lib \
 && ln -s "${real}" /opt/llvm/lib/libLLVM.so \
 && ln -s "${real}" "/opt/llvm/lib/$(basename "${real}")" \
 && LLVM_PREFIX=/opt/llvm LD_LIBRARY_PATH=/opt/llvm/lib \
    cargo +nightly install bpf-linker --locked --version "${BPF_LINKER_VERSION}" \
      --no-default-features --features "${LLVM_FEATURE}" --root /usr/local \
 && bpf-linker --version

FROM toolchain AS build
WORKDIR /src
# Every workspace member must be present for cargo to load the workspace.
COPY Cargo.toml Cargo.lock ./
COPY .cargo/ .cargo/
COPY agent/ agent/
COPY agent-ebpf/ agent-ebpf/
COPY game-server/ game-server/
COPY xtask/ xtask/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p agent --bin kernelsight-agent \
 && install -D -m 0755 target/release/kernelsight-agent /out/kernelsight-agent

FROM ${RUNTIME_IMAGE}
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/kernelsight-agent /usr/local/bin/kernelsight-agent
ENV KERNELSIGHT_HTTP_ADDR=0.0.0.0:9464
# 9464: /metrics /healthz /readyz; 4317/4318: OTLP gRPC/HTTP from the node's workloads.
EXPOSE 9464 4317 4318
# uid 0 on purpose, but not privileged: the DaemonSet drops every capability and adds back only
# BPF, PERFMON and SYS_RESOURCE. uid 0 is what lets it read tracefs (mode 0700, root's) without
# CAP_DAC_OVERRIDE; a non-root uid would need file capabilities, i.e. allowPrivilegeEscalation.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/usr/local/bin/kernelsight-agent"]
