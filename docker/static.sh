#!/usr/bin/env bash
# `make static`: statically linked release builds of servicelog-operator and
# servicelog-sidecar in target/static/, the binaries docker/Dockerfile puts in its
# distroless image.
#
# musl (x86_64-unknown-linux-musl) when its Rust target is installed or can be added, with
# musl-gcc (Debian musl-tools) for ring's C and assembly; otherwise glibc linked with
# crt-static. STATIC_LIBC=musl|gnu forces one. Fails unless both binaries are static.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}
out=target/static
bins=(servicelog-operator servicelog-sidecar servicelog-agent)

has_musl_target() { rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; }

libc=${STATIC_LIBC:-}
if [[ -z $libc ]]; then
  # The Rust dist server may be unreachable (offline CI): then fall back to glibc.
  has_musl_target || timeout 120 rustup target add x86_64-unknown-linux-musl >&2 || true
  if has_musl_target; then libc=musl; else libc=gnu; fi
fi

case $libc in
  musl)
    triple=x86_64-unknown-linux-musl
    if ! command -v musl-gcc >/dev/null && ! command -v x86_64-linux-musl-gcc >/dev/null; then
      echo "static: installing musl-tools (musl-gcc, for ring)" >&2
      sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends musl-tools >&2
    fi
    command -v x86_64-linux-musl-gcc >/dev/null || export CC_x86_64_unknown_linux_musl=musl-gcc
    flags=""
    ;;
  gnu)
    echo "static: linking glibc statically (-C target-feature=+crt-static)" >&2
    triple=x86_64-unknown-linux-gnu
    flags="-C target-feature=+crt-static"
    ;;
  *) echo "static: STATIC_LIBC must be musl or gnu, not '$libc'" >&2; exit 2 ;;
esac

# --target keeps RUSTFLAGS off build scripts and proc macros (they stay dynamic host code).
CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_DEBUG=0 \
  RUSTFLAGS="$flags ${RUSTFLAGS:-}" \
  "$cargo" build --release --locked --target "$triple" "${bins[@]/#/--package=}" --bins

# Cargo writes under CARGO_TARGET_DIR when it is set (a cache outside the checkout).
built=${CARGO_TARGET_DIR:-target}/$triple/release
mkdir -p "$out"
for bin in "${bins[@]}"; do
  cp "$built/$bin" "$out/$bin"
  desc=$(file -L "$out/$bin")
  # ldd names every shared library a dynamic binary would load ("lib… => …").
  if ! grep -Eq 'statically linked|static-pie linked' <<<"$desc" || ldd "$out/$bin" 2>&1 | grep -q '=>'; then
    echo "static: $out/$bin is not statically linked: $desc" >&2
    exit 1
  fi
  echo "static: $desc" >&2
done
ls -l "$out/" >&2
