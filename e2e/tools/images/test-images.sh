#!/usr/bin/env bash
# The two images the node test and `make cluster` import into the node's containerd:
#   servicelog.test/pause:1    the sandbox image: the static pause binary alone
#   servicelog.test/busybox:1  Debian's static busybox with its applets as symlinks
#                              (sh, sleep, nslookup, wget, httpd, ...)
#
#   test-images.sh OUT_DIR PAUSE_BINARY     writes OUT_DIR/{pause,busybox}.tar
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$1" pause="$2"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/pause"
install -m 0755 "$pause" "$work/pause/pause"
ENTRYPOINT='["/pause"]' bash "$here/oci-image.sh" "$out/pause.tar" servicelog.test/pause:1 "$work/pause"

[[ -x /bin/busybox ]] || { echo "test-images.sh: /bin/busybox is missing (apt-get install busybox-static)" >&2; exit 1; }
root="$work/busybox"
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/www"
install -m 0755 /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
ENTRYPOINT='["/bin/sh"]' IMAGE_ENV='["PATH=/bin"]' bash "$here/oci-image.sh" "$out/busybox.tar" servicelog.test/busybox:1 "$root"
