#!/usr/bin/env bash
# The HTTP receiver pod's image, servicelog.test/receiver:1: the `servicelog-receiver`
# binary (e2e/src/bin/receiver.rs, a normal dynamically linked debug build) with the C
# libraries `ldd` says it loads, at the same paths, and nothing else.
#
#   receiver-image.sh OUT.tar BINARY
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$1" binary="$2"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/etc" "$work/tmp"
install -m 0755 "$binary" "$work/bin/servicelog-receiver"
# "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)"
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  mkdir -p "$work$(dirname "$lib")"
  cp -L "$lib" "$work$lib"
done
printf 'root:x:0:0:root:/:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$work/etc/passwd"
chmod 1777 "$work/tmp"
ENTRYPOINT='["/bin/servicelog-receiver"]' CMD='["8080"]' IMAGE_USER='"65534"' \
  EXPOSED_PORTS='{"8080/tcp":{}}' \
  bash "$here/oci-image.sh" "$out" servicelog.test/receiver:1 "$work"
