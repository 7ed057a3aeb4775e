#!/usr/bin/env bash
# Fetches the Apache Kafka broker (`org.apache.kafka:kafka_2.13` and its runtime
# dependencies) from Maven Central into ~/.cache/servicelog/kafka/<version>/libs, once per
# version; e2e/src/kafka.rs runs it with the machine's Java 17 (KRaft, single node).
# Maven resolves the POMs and checks every file against the repository's sha1
# (--strict-checksums: a mismatch fails the fetch). Prints the libs directory.
#
# The version is KAFKA_VERSION in e2e/tools/VERSIONS.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n "s/^KAFKA_VERSION=//p" e2e/tools/VERSIONS)
[[ -n $version ]] || { echo "kafka.sh: no KAFKA_VERSION in e2e/tools/VERSIONS" >&2; exit 1; }
cache=${SERVICELOG_CACHE:-$HOME/.cache/servicelog}/kafka/$version
libs=$cache/libs
if [[ -f $cache/complete ]]; then echo "$libs"; exit 0; fi
# Test processes that need the broker at once fetch it once: the others wait here.
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
if [[ -f $cache/complete ]]; then echo "$libs"; exit 0; fi
command -v java >/dev/null || bash scripts/deps.sh
if ! command -v mvn >/dev/null; then
  echo "kafka.sh: installing maven" >&2
  sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends maven >&2
fi
started=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.servicelog.testenv</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>0</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$version</version>
    </dependency>
    <!-- The broker logs through SLF4J 1.7 but its POM names no binding: without one it
         logs nothing, and a start that fails could not say why. -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
POM
rm -rf "$libs"
echo "kafka.sh: fetching Apache Kafka $version from Maven Central" >&2
# A repository of our own under the cache: the fetch does not depend on (or fill) ~/.m2.
mvn -B -q -Dstyle.color=never --strict-checksums -f "$work/pom.xml" \
  -Dmaven.repo.local="$cache/m2" \
  org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$libs" >&2
ls "$libs"/kafka_2.13-"$version".jar >/dev/null
touch "$cache/complete"
echo "kafka.sh: Apache Kafka $version fetched in $(($(date +%s) - started))s ($(du -sh "$libs" | cut -f1))" >&2
echo "$libs"
