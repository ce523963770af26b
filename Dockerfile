# agentcom in a container: one static-ish binary on a slim base.
# Build:   docker build -t agentcom:$(git rev-parse --short HEAD) .
# Roll back by image tag: see docs/guard.md.

# ---- build stage ----------------------------------------------------------------------------
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so code edits do not rebuild them.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates ./crates
RUN cargo build --release --locked -p agentcom \
 && strip target/release/agentcom

# ---- final image ----------------------------------------------------------------------------
FROM debian:bookworm-slim
# git: the guard merges and rolls back the agent's repo; ca-certificates for the agent's own use.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 agent
COPY --from=build /src/target/release/agentcom /usr/local/bin/agentcom
USER agent
WORKDIR /agent
# State (checkpoints, queue.json, supervisor state), config and the agent's repo are volumes.
VOLUME ["/agent/data", "/agent/config", "/agent/repo"]
ENV AGENTCOM_STATE_DIR=/agent/data/state \
    AGENTCOM_SUPERVISOR_DIR=/agent/data/supervisor \
    AGENTCOM_DATA_DIR=/agent/data/hub
ENTRYPOINT ["agentcom"]
CMD ["supervisor"]
