#!/usr/bin/env bash
# Builds the sidecar image hotsync-agent:VERSION (and the tests' app image) offline: static
# binaries compiled here (+crt-static, glibc: this toolchain has no musl target), FROM scratch.
# Usage: images/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
target=x86_64-unknown-linux-gnu
# --target keeps RUSTFLAGS away from build scripts and proc macros.
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --target "$target" -p hotsync-agent -p hotsync-host
bin=target/$target/release
ctx=target/images
rm -rf "$ctx" && mkdir -p "$ctx/agent/empty" "$ctx/test-app/empty"
cp images/agent/Dockerfile "$bin/hotsync-agent" "$ctx/agent/"
cp images/test-app/Dockerfile "$bin/hotsync" "$ctx/test-app/"
docker build -q -t "hotsync-agent:$version" "$ctx/agent" >/dev/null
docker build -q -t "hotsync-test-app:$version" "$ctx/test-app" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "hotsync-agent:$version")
echo "built hotsync-agent:$version ($((size / 1024 / 1024)) MiB) and hotsync-test-app:$version"
