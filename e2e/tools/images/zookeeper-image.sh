#!/usr/bin/env bash
# The embedded ZooKeeper's image, built here from Debian packages with no registry and no
# Docker: Debian's ZooKeeper 3.8 (zookeeper.jar and the jars its manifest's Class-Path
# names, at the same /usr/share/java paths), a Java 17 runtime cut by `jlink` to the
# modules those jars use, the C libraries it loads, and busybox-static for the shell the
# chart's StatefulSet and probes run (`sh -c`, `nc`). It speaks the official `zookeeper`
# image's interface, which the chart was written for: /docker-entrypoint.sh writes
# $ZOO_CONF_DIR/zoo.cfg from the ZOO_* variables (ZOO_SERVERS, ZOO_STANDALONE_ENABLED,
# ZOO_DATA_DIR, ZOO_4LW_COMMANDS_WHITELIST, ZOO_CFG_EXTRA, ...) and $ZOO_DATA_DIR/myid from
# ZOO_MY_ID, then runs its arguments; `zkServer.sh start-foreground` runs the server in the
# foreground with $JVMFLAGS, logging to stdout. Runs as zookeeper, uid/gid 1000 (the
# chart's podSecurityContext); /conf is world-writable (1777, like /tmp) because the
# image's files are root's and the entrypoint writes zoo.cfg there at start.
#
#   zookeeper-image.sh OUT.tar REF
#
# Cached in ~/.cache/servicelog/images/ by the hash of this script and of the Debian
# packages it takes files from: a second build with nothing changed copies the archive.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$1" ref="$2"
jdk=/usr/lib/jvm/java-17-openjdk-amd64
packages=(zookeeper libzookeeper-java openjdk-17-jdk-headless busybox-static libc6 libstdc++6 zlib1g)
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
    { echo "zookeeper-image: Debian package $p is missing (make deps; apt-get install $p)" >&2; exit 1; }
done
[[ -x $jdk/bin/jlink && -d $jdk/jmods ]] ||
  { echo "zookeeper-image: no jlink/jmods in $jdk (apt-get install openjdk-17-jdk-headless)" >&2; exit 1; }

key=$({ sha256sum "$0" "$here/oci-image.sh"; echo "$ref"; dpkg-query -W "${packages[@]}"; } | sha256sum | cut -c1-16)
cache=${SERVICELOG_CACHE:-$HOME/.cache/servicelog}/images
cached=$cache/zookeeper-$key.tar
if [[ -f $cached ]]; then
  cp "$cached" "$out"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/usr/share/java" "$root/usr/local/bin" "$root/bin" "$root/etc" "$root/tmp" \
  "$root/conf" "$root/data" "$root/datalog" "$root/logs" "$root/home/zookeeper"

# The server's jars: zookeeper.jar's manifest loads the others from absolute paths, so they
# keep them (entries Debian does not ship — Jetty for the admin server, jline for the CLI —
# are skipped by the JVM, and the image turns the admin server off). slf4j-simple: the log
# on stderr, as `kubectl logs` shows it.
manifest_cp=$(unzip -p /usr/share/java/zookeeper.jar META-INF/MANIFEST.MF |
  tr -d '\r' | sed -n '/^Class-Path:/,/^[A-Z]/p' | sed -e 's/^Class-Path: //' -e 's/^ //' |
  grep -v '^[A-Z][A-Za-z-]*:' | tr -d '\n')
for jar in /usr/share/java/zookeeper.jar /usr/share/java/slf4j-simple.jar $manifest_cp; do
  [[ -e $jar ]] && cp -L "$jar" "$root$jar"
done

# The runtime: the modules `jdeps --print-module-deps` finds in those jars, plus
# jdk.management (ZooKeeper's metrics read the OS MXBean) and jdk.crypto.ec (TLS with EC
# keys, for a zoo.cfg that turns it on).
"$jdk/bin/jlink" --add-modules \
  java.base,java.desktop,java.management.rmi,java.naming,java.security.jgss,java.security.sasl,java.sql,jdk.unsupported,jdk.management,jdk.crypto.ec \
  --strip-debug --no-header-files --no-man-pages --compress=2 --output "$root/opt/java"
# java.desktop is there for java.beans (jackson-databind); its AWT, font, image and sound
# libraries, and the X11 libraries they would pull in, are not: a server never loads them.
rm -f "$root"/opt/java/lib/{libawt,libawt_headless,libawt_xawt,libfontmanager,libjavajpeg,liblcms,libmlib_image,libjsound,libsplashscreen,libjawt}.so
# The C libraries the JVM and its libraries load, at the paths the loader looks in.
for lib in $(find "$root/opt/java" \( -name '*.so' -o -path '*/bin/java' \) -exec ldd {} + 2>/dev/null |
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }' | sort -u); do
  [[ -e $root$lib ]] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
done

install -m 0755 /bin/busybox "$root/bin/busybox"
for applet in sh cat echo grep mkdir nc ls ps rm sleep env hostname; do
  ln -s busybox "$root/bin/$applet"
done

printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
  'zookeeper:x:1000:1000:zookeeper:/home/zookeeper:/sbin/nologin' \
  'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' >"$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'zookeeper:x:1000:' 'nobody:x:65534:' >"$root/etc/group"
chmod 1777 "$root/tmp" "$root/conf"
chmod 0777 "$root/data" "$root/datalog" "$root/logs"
chmod 0755 "$root/home/zookeeper"

# The official image's entrypoint, in POSIX sh: zoo.cfg only when none is there (a
# mounted /conf wins), myid only when the data directory has none.
cat >"$root/docker-entrypoint.sh" <<'SH'
#!/bin/sh
set -e
if [ ! -f "$ZOO_CONF_DIR/zoo.cfg" ]; then
  config="$ZOO_CONF_DIR/zoo.cfg"
  {
    echo "dataDir=$ZOO_DATA_DIR"
    echo "dataLogDir=$ZOO_DATA_LOG_DIR"
    echo "tickTime=$ZOO_TICK_TIME"
    echo "initLimit=$ZOO_INIT_LIMIT"
    echo "syncLimit=$ZOO_SYNC_LIMIT"
    echo "autopurge.snapRetainCount=$ZOO_AUTOPURGE_SNAPRETAINCOUNT"
    echo "autopurge.purgeInterval=$ZOO_AUTOPURGE_PURGEINTERVAL"
    echo "maxClientCnxns=$ZOO_MAX_CLIENT_CNXNS"
    echo "standaloneEnabled=$ZOO_STANDALONE_ENABLED"
    echo "admin.enableServer=$ZOO_ADMINSERVER_ENABLED"
    for server in ${ZOO_SERVERS:-server.1=localhost:2888:3888;2181}; do echo "$server"; done
    if [ -n "$ZOO_4LW_COMMANDS_WHITELIST" ]; then
      echo "4lw.commands.whitelist=$ZOO_4LW_COMMANDS_WHITELIST"
    fi
    for extra in $ZOO_CFG_EXTRA; do echo "$extra"; done
  } >"$config"
fi
mkdir -p "$ZOO_DATA_DIR" "$ZOO_DATA_LOG_DIR"
if [ ! -f "$ZOO_DATA_DIR/myid" ]; then
  echo "${ZOO_MY_ID:-1}" >"$ZOO_DATA_DIR/myid"
fi
exec "$@"
SH
chmod 0755 "$root/docker-entrypoint.sh"
# `zkServer.sh start-foreground`, the official image's command: the only mode a container
# needs.
cat >"$root/usr/local/bin/zkServer.sh" <<'SH'
#!/bin/sh
case "${1:-start-foreground}" in
start-foreground) ;;
*) echo "zkServer.sh: this image runs only start-foreground, not '$1'" >&2; exit 2 ;;
esac
# showDateTime: each log line starts with the milliseconds since the JVM started.
# shellcheck disable=SC2086 # JVMFLAGS is a list of flags, as in the official image
exec /opt/java/bin/java $JVMFLAGS -Dorg.slf4j.simpleLogger.showDateTime=true \
  -Dzookeeper.log.dir="$ZOO_LOG_DIR" -cp /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar \
  org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZOO_CONF_DIR/zoo.cfg"
SH
chmod 0755 "$root/usr/local/bin/zkServer.sh"

version=$(dpkg-query -W -f='${Version}' zookeeper)
env='["PATH=/usr/local/bin:/opt/java/bin:/bin","JAVA_HOME=/opt/java","ZOO_CONF_DIR=/conf","ZOO_DATA_DIR=/data","ZOO_DATA_LOG_DIR=/datalog","ZOO_LOG_DIR=/logs","ZOO_TICK_TIME=2000","ZOO_INIT_LIMIT=5","ZOO_SYNC_LIMIT=2","ZOO_AUTOPURGE_PURGEINTERVAL=0","ZOO_AUTOPURGE_SNAPRETAINCOUNT=3","ZOO_MAX_CLIENT_CNXNS=60","ZOO_STANDALONE_ENABLED=true","ZOO_ADMINSERVER_ENABLED=false"]'
ENTRYPOINT='["/docker-entrypoint.sh"]' CMD='["zkServer.sh","start-foreground"]' \
  IMAGE_USER='"1000:1000"' IMAGE_ENV="$env" \
  EXPOSED_PORTS='{"2181/tcp":{},"2888/tcp":{},"3888/tcp":{}}' \
  LABELS='{"org.opencontainers.image.title":"servicelog-zookeeper","org.opencontainers.image.description":"Debian'"'"'s ZooKeeper '"$version"' on a jlink Java 17 runtime, for the servicelog chart'"'"'s embedded ZooKeeper","org.opencontainers.image.licenses":"Apache-2.0"}' \
  bash "$here/oci-image.sh" "$work/image.tar" "$ref" "$root"
mkdir -p "$cache"
cp "$work/image.tar" "$cached.partial" && mv "$cached.partial" "$cached"
mv "$work/image.tar" "$out"
