#!/usr/bin/env bash
# `make bench`: every benchmark of docs/benchmarks.md, in order, each figure beside the
# contender measured in the same run; prints a table and merges its sections into
# target/bench/results.json (servicelog-bench, run last, merges its own sections there too).
#
#   1. api_route        the parse+route hot path (criterion), against a plain serde_json parse
#   2. sidecar_routing  shared/bench/WORKLOAD.md through the sidecar, syslog-ng and rsyslog,
#                       3 interleaved runs each, pinned to one core; and the sidecar with
#                       http json_lines sinks to a local receiver (file → http vs file → file)
#                       and with kafka sinks to a real broker (file → Kafka vs file → file)
#   2b. transforms      the sidecar file → file with a 3-transform rule set against the same
#                       rules without transforms: CPU per line, 3 interleaved runs, one core
#   2c. agent           the node agent on one pod's CRI file against the sidecar on the same
#                       lines in a plain file: CPU per line, 3 interleaved runs, one core; its
#                       RSS serving 100 pods (real API server and ZooKeeper, temp /var/log/pods)
#   3. propagation      setData on the config znode → the sidecar's ack, against ZooKeeper's
#                       own floor (a watcher re-reading the config)
#   4. operator_scale, webhook, fleet   servicelog-bench (release build) on the test control
#                       plane; the fleet at 100 and 1,000 sidecar processes beside ZooKeeper's
#                       floor at the same N (BENCH_FLEET_SIZES=100,1000; `ulimit -n` ≥ 4096)
#   5. rollout          servicelog-bench rollout: a staged rollout on the fleet of 100 and 1,000
#                       sidecars (BENCH_ROLLOUT_SIZES=100,1000, BENCH_ROLLOUT_ROUNDS=20):
#                       kubectl patch → step 1 applied on its canaries, and → a rejected
#                       change rolled back on every canary, p50/p99; ZooKeeper's and the
#                       operator's memory, the operator's CPU
#
# Installs what it needs on a fresh Debian machine: `time`, `jq`, syslog-ng (Debian's
# syslog-ng-core, without starting its service), rsyslog (it conflicts with syslog-ng, so
# its package is unpacked into ~/.cache/servicelog/contenders/rsyslog), ZooKeeper
# (scripts/deps.sh) and the control-plane tools (e2e/tools/build.sh).
#
# BENCH_SECTIONS=route,routing,transforms,agent,propagation,operator,rollout picks sections (default all); the
# BENCH_* variables of sidecar/benches/*.rs pass through.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
CARGO=${CARGO:-cargo}
sections=",${BENCH_SECTIONS:-route,routing,transforms,agent,propagation,operator,rollout},"
cache=${XDG_CACHE_HOME:-$HOME/.cache}/servicelog/contenders
out_dir=$root/target/bench
results=$out_dir/results.json
logs=$out_dir/logs
mkdir -p "$logs"
failed=()

say() { printf '\n== bench: %s\n' "$*" >&2; }
want() { [[ $sections == *",$1,"* ]]; }

sudo=""
[[ $(id -u) == 0 ]] || sudo="sudo"
apt_updated=""
apt_install() {
  if [[ -z $apt_updated ]]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}

# --- what the benchmarks need --------------------------------------------------------------
install_deps() {
  local need=()
  [[ -x /usr/bin/time ]] || need+=(time)
  command -v jq >/dev/null || need+=(jq)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v getconf >/dev/null || need+=(libc-bin)
  if ((${#need[@]})); then
    say "installing ${need[*]}"
    apt_install "${need[@]}"
  fi
}

# syslog-ng from Debian, its service not started: with no policy-rc.d, one that refuses
# every start is in place for the install only. --no-remove: on a machine whose system
# logger is rsyslog, apt would replace it; we skip syslog-ng there instead.
install_syslog_ng() {
  if command -v syslog-ng >/dev/null || [[ -x /usr/sbin/syslog-ng ]]; then
    return 0
  fi
  say "installing syslog-ng-core (its service is not started)"
  local guard=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    guard=1
  fi
  local ok=1
  apt_install --no-remove syslog-ng-core || ok=""
  [[ -z $guard ]] || $sudo rm -f /usr/sbin/policy-rc.d
  if [[ -z $ok ]]; then
    echo "bench: syslog-ng-core could not be installed without removing packages (is rsyslog the system logger?); syslog-ng will be reported unavailable" >&2
  fi
}

# rsyslog unpacked from Debian's package (it conflicts with syslog-ng-core), with the
# libraries it links installed normally.
install_rsyslog() {
  local dir=$cache/rsyslog
  if [[ ! -x $dir/usr/sbin/rsyslogd ]]; then
    say "unpacking Debian's rsyslog into $dir"
    mkdir -p "$cache/debs"
    [[ -n $apt_updated ]] || { $sudo apt-get update -qq; apt_updated=1; }
    rm -f "$cache"/debs/rsyslog_*.deb
    (cd "$cache/debs" && apt-get download rsyslog 2> >(grep -v 'unsandboxed' >&2))
    rm -rf "$dir.tmp"
    dpkg -x "$cache"/debs/rsyslog_*.deb "$dir.tmp"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
  fi
  local libs=()
  for dep in $(dpkg-deb -f "$cache"/debs/rsyslog_*.deb Depends 2>/dev/null |
    tr ',' '\n' | sed -E 's/\|.*//; s/\(.*\)//; s/[[:space:]]//g'); do
    dpkg -s "$dep" >/dev/null 2>&1 || libs+=("$dep")
  done
  if ((${#libs[@]})); then
    say "installing rsyslog's libraries: ${libs[*]}"
    apt_install "${libs[@]}"
  fi
  if ldd "$dir/usr/sbin/rsyslogd" | grep -q 'not found'; then
    echo "bench: $dir/usr/sbin/rsyslogd misses libraries:" >&2
    ldd "$dir/usr/sbin/rsyslogd" | grep 'not found' >&2
  fi
}

# Merges `$2` (a JSON file) into results.json under key `$1`.
merge() {
  local key=$1 file=$2 tmp
  tmp=$(mktemp "$out_dir/results.XXXXXX")
  if [[ -s $results ]] && jq -e 'type == "object"' "$results" >/dev/null 2>&1; then
    jq --arg k "$key" --slurpfile v "$file" '.[$k] = $v[0]' "$results" >"$tmp"
  else
    jq -n --arg k "$key" --slurpfile v "$file" '{($k): $v[0]}' >"$tmp"
  fi
  mv "$tmp" "$results"
}

# Records a section that did not run, replacing figures of an earlier run.
mark() {
  local key=$1 status=$2 reason=$3 tmp
  tmp=$(mktemp "$out_dir/mark.XXXXXX")
  jq -n --arg s "$status" --arg r "$reason" '{status: $s, reason: $r}' >"$tmp"
  merge "$key" "$tmp"
  rm -f "$tmp"
}

install_deps
target_dir=$($CARGO metadata --format-version 1 --no-deps | jq -r .target_directory)
meta=$(mktemp)
jq -n --arg date "$(date -u +%FT%TZ)" --arg host "$(uname -srm)" --arg nproc "$(nproc)" \
  --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
  --arg commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --arg dirty "$(git status --porcelain 2>/dev/null | head -1)" \
  '{date: $date, kernel: $host, cores: ($nproc | tonumber), cpu: $cpu, commit: $commit,
    dirty: ($dirty != "")}' >"$meta"
merge _meta "$meta"
rm -f "$meta"

# --- 1. the hot path -----------------------------------------------------------------------
if want route; then
  say "1/4 api route (criterion)"
  stamp=$(mktemp)
  crit=${CRITERION_HOME:-$target_dir/criterion}
  if $CARGO bench -p servicelog-api --bench route -- --warm-up-time 1 --measurement-time 3 \
    2>&1 | tee "$logs/route.log" >&2; then
    tmp=$(mktemp)
    find "$crit/route" -path '*/new/benchmark.json' -newer "$stamp" -print0 2>/dev/null |
      while IFS= read -r -d '' b; do
        jq -c --slurpfile e "$(dirname "$b")/estimates.json" '{
          name: .function_id,
          lines_per_iter: .throughput.Elements,
          ns_per_line: ($e[0].median.point_estimate / .throughput.Elements),
          ns_per_line_ci95: [($e[0].median.confidence_interval.lower_bound / .throughput.Elements),
                             ($e[0].median.confidence_interval.upper_bound / .throughput.Elements)]
        } | .lines_per_s = (1e9 / .ns_per_line)' "$b"
      done | jq -s '
        (map(select(.name | test("baseline"))) | first) as $base
        | {status: (if length > 0 then "ok" else "no results" end),
           estimate: "criterion median, per line",
           baseline: $base.name,
           functions: (map({key: .name, value: (. + {
             speedup_vs_baseline: (if $base then $base.ns_per_line / .ns_per_line else null end)
           } | del(.name))}) | from_entries)}' >"$tmp"
    merge api_route "$tmp"
    rm -f "$tmp"
  else
    echo "bench: api route did not build or run (log: $logs/route.log); skipped" >&2
    mark api_route skipped "cargo bench -p servicelog-api --bench route failed; see target/bench/logs/route.log"
  fi
  rm -f "$stamp"
fi

# --- 2. routing against syslog-ng and rsyslog ----------------------------------------------
if want routing; then
  say "2/4 sidecar routing vs syslog-ng and rsyslog (3 interleaved runs, one core)"
  install_syslog_ng
  install_rsyslog
  tmp=$(mktemp)
  if BENCH_RSYSLOG_DIR=${BENCH_RSYSLOG_DIR:-$cache/rsyslog} \
    $CARGO bench -p servicelog-sidecar --bench routing >"$tmp" 2> >(tee "$logs/routing.log" >&2); then
    merge sidecar_routing "$tmp"
  else
    failed+=(sidecar_routing)
    mark sidecar_routing failed "see target/bench/logs/routing.log"
  fi
  rm -f "$tmp"
fi

# --- 2b. transforms ------------------------------------------------------------------------
if want transforms; then
  say "2b/4 transforms: 3 transforms per rule vs none (3 interleaved runs, one core)"
  tmp=$(mktemp)
  if $CARGO bench -p servicelog-sidecar --bench transforms >"$tmp" \
    2> >(tee "$logs/transforms.log" >&2); then
    merge transforms "$tmp"
  else
    failed+=(transforms)
    mark transforms failed "see target/bench/logs/transforms.log"
  fi
  rm -f "$tmp"
fi

# --- 2c. agent -----------------------------------------------------------------------------
if want agent; then
  say "2c/4 node agent: CRI → file vs the sidecar's file → file (3 interleaved runs, one core), RSS with 100 pods"
  bash scripts/deps.sh
  tmp=$(mktemp)
  if bash e2e/tools/build.sh >/dev/null &&
    $CARGO build --release -p servicelog-sidecar --bin servicelog-sidecar &&
    $CARGO bench -p servicelog-agent --bench agent >"$tmp" 2> >(tee "$logs/agent.log" >&2); then
    merge agent "$tmp"
  else
    failed+=(agent)
    mark agent failed "see target/bench/logs/agent.log"
  fi
  rm -f "$tmp"
fi

# --- 3. propagation ------------------------------------------------------------------------
if want propagation; then
  say "3/4 config propagation vs ZooKeeper's floor"
  bash scripts/deps.sh
  tmp=$(mktemp)
  if $CARGO bench -p servicelog-sidecar --bench propagation >"$tmp" \
    2> >(tee "$logs/propagation.log" >&2); then
    merge propagation "$tmp"
  else
    failed+=(propagation)
    mark propagation failed "see target/bench/logs/propagation.log"
  fi
  rm -f "$tmp"
fi

# --- 4. operator and webhook ---------------------------------------------------------------
if want operator; then
  say "4/4 operator scale and webhook (servicelog-bench)"
  bash scripts/deps.sh
  # The fleet's 1,000 sidecars, and as many ZooKeeper sessions of the bench's own.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if bash e2e/tools/build.sh >/dev/null &&
    $CARGO build --release -p servicelog-operator -p servicelog-sidecar -p servicelog-e2e --bins &&
    "$target_dir/release/servicelog-bench" 2>&1 | tee "$logs/operator.log" >&2; then
    :
  else
    failed+=(operator_scale webhook fleet)
    for k in operator_scale webhook fleet; do
      mark "$k" failed "see target/bench/logs/operator.log"
    done
  fi
fi

# --- 5. staged rollout ----------------------------------------------------------------------
if want rollout; then
  say "5/5 staged rollout on the fleet (servicelog-bench rollout)"
  bash scripts/deps.sh
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if bash e2e/tools/build.sh >/dev/null &&
    $CARGO build --release -p servicelog-operator -p servicelog-sidecar -p servicelog-e2e --bins &&
    "$target_dir/release/servicelog-bench" rollout 2>&1 | tee "$logs/rollout.log" >&2; then
    :
  else
    failed+=(rollout)
    mark rollout failed "see target/bench/logs/rollout.log"
  fi
fi

# --- the table -----------------------------------------------------------------------------
jq -r '
  def num(d): if type == "number" then (. * pow(10; d) | round / pow(10; d) | tostring) else "–" end;
  def pad(n): tostring | if length < n then . + " " * (n - length) else . end;
  def row(a; b; c; d; e): "\(a | pad(16)) \(b | pad(40)) \(c | pad(12)) \(d | pad(30)) \(e)";
  def x: if type == "number" then "\(num(2))×" else "–" end;
  def status(s): if s.status? and (s.status == "skipped" or s.status == "failed") then
      [row(""; "\(s.status): \(s.reason)"; ""; ""; "")] else [] end;
  row("section"; "figure (median)"; "servicelog"; "contender (same run)"; "ratio"),
  ("-" * 108),
  (.api_route // {} | . as $s | status($s)[],
    (.functions // {} | to_entries[] | select(.key | test("baseline") | not) |
      row("api route"; "\(.key), ns/line"; (.value.ns_per_line | num(1));
          "serde_json baseline: \($s.functions[$s.baseline].ns_per_line | num(1))";
          (.value.speedup_vs_baseline | x)))),
  (.sidecar_routing // {} | . as $r | status($r)[],
    ($r.contenders // {} | .["servicelog-sidecar"].median) as $m
    | ($r.contenders // {} | to_entries[]
        | select(.key != "servicelog-sidecar" and .key != "servicelog-sidecar-http"
            and .key != "servicelog-sidecar-kafka")) as $c
    | if $c.value.median then
        row("sidecar routing"; "lines per CPU-second"; ($m.lines_per_cpu_s | num(0));
            "\($c.key): \($c.value.median.lines_per_cpu_s | num(0))"; ($r.ratios[$c.key].lines_per_cpu_s | x)),
        row(""; "lines/s (wall)"; ($m.lines_per_s | num(0));
            "\($c.key): \($c.value.median.lines_per_s | num(0))"; ($r.ratios[$c.key].lines_per_s | x)),
        row(""; "MiB/s (wall)"; ($m.mib_per_s | num(1));
            "\($c.key): \($c.value.median.mib_per_s | num(1))"; ""),
        row(""; "CPU seconds"; ($m.cpu_s | num(2));
            "\($c.key): \($c.value.median.cpu_s | num(2))"; ""),
        row(""; "peak RSS, MiB"; ($m.max_rss_mib | num(1));
            "\($c.key): \($c.value.median.max_rss_mib | num(1))"; ($r.ratios[$c.key].max_rss | x)),
        (if $c.value.status == "failed" then
          row(""; "\($c.key): \($c.value.failed_runs) failed run(s)"; ""; ""; "") else empty end)
      else row("sidecar routing"; "\($c.key): \($c.value.status)"; ""; ($c.value.reason // "" | .[0:60]); "")
      end),
  (.sidecar_routing // {} | . as $r | ($r.contenders // {})["servicelog-sidecar-http"] // null
    | if . and .median then
        row("sidecar routing"; "file → http (json_lines), lines per CPU-s"; (.median.lines_per_cpu_s | num(0));
            "file → file: \($r.contenders["servicelog-sidecar"].median.lines_per_cpu_s | num(0))";
            ($r.file_to_http.lines_per_cpu_s | x)),
        row(""; "target: file → http ≥ 0.7× file → file";
            ($r.targets.http_vs_file_lines_per_cpu_s.met | tostring); ""; "")
      elif . then row("sidecar routing"; "file → http: \(.status)"; ""; (.reason // "" | .[0:60]); "")
      else empty end),
  (.sidecar_routing // {} | . as $r | ($r.contenders // {})["servicelog-sidecar-kafka"] // null
    | if . and .median then
        row("sidecar routing"; "file → Kafka, lines per CPU-s"; (.median.lines_per_cpu_s | num(0));
            "file → file: \($r.contenders["servicelog-sidecar"].median.lines_per_cpu_s | num(0))";
            ($r.file_to_kafka.lines_per_cpu_s | x)),
        row(""; "target: file → Kafka ≥ 0.6× file → file";
            ($r.targets.kafka_vs_file_lines_per_cpu_s.met | tostring); ""; "")
      elif . then row("sidecar routing"; "file → Kafka: \(.status)"; ""; (.reason // "" | .[0:60]); "")
      else empty end),
  (.sidecar_routing.idle_rss_kib // null | if . then
    row(""; "idle RSS, MiB (target < 8)"; (. / 1024 | num(1)); ""; "") else empty end),
  (.sidecar_routing.targets // null | if . then
    row(""; "target: ≥ 5× syslog-ng per CPU-s"; (.lines_per_cpu_s_vs_syslog_ng.met | tostring); "";
        "") else empty end),
  (.transforms // {} | . as $t | status($t)[],
    if $t.none.median and $t.transforms.median then
      row("transforms"; "3 transforms per rule, ns CPU per line"; ($t.transforms.median.ns_per_line | num(0));
          "no transforms: \($t.none.median.ns_per_line | num(0))"; ($t.cost_per_line_ratio | x)),
      row(""; "target: ≤ 1.5× the cost per line"; ($t.target.met | tostring); ""; "")
    else empty end),
  (.agent // {} | . as $a | status($a)[],
    if $a.agent_cri.median and $a.sidecar_file.median then
      row("node agent"; "CRI → file, lines per CPU-second"; ($a.agent_cri.median.lines_per_cpu_s | num(0));
          "sidecar file → file: \($a.sidecar_file.median.lines_per_cpu_s | num(0))"; ($a.agent_vs_sidecar_lines_per_cpu_s | x))
    else empty end,
    if $a.pods then
      row(""; "RSS serving \($a.pods.pods) pods, MiB"; ($a.pods.rss_mib | num(1));
          "one sidecar, warm: \($a.sidecar_file.warm_rss_mib | num(1))"; "")
    else empty end),
  (.propagation // {} | . as $p | status($p)[],
    if $p.ack_ms then
      row("propagation"; "setData → ack, p50 ms"; ($p.ack_ms.p50 | num(2));
          "ZooKeeper floor: \($p.zookeeper_floor_ms.p50 | num(2))"; ($p.ratio.p50 | x)),
      row(""; "setData → ack, p99 ms"; ($p.ack_ms.p99 | num(2));
          "ZooKeeper floor: \($p.zookeeper_floor_ms.p99 | num(2))"; ($p.ratio.p99 | x))
    else empty end),
  (.operator_scale // {} | . as $o | status($o)[],
    if $o.servicelogs then
      row("operator scale"; "\($o.servicelogs) ServiceLogs → znodes, s"; ($o.znodes_published_s | num(1)); ""; ""),
      row(""; "→ statuses, s"; ($o.statuses_published_s | num(1)); ""; ""),
      row(""; "operator peak RSS, MiB"; ($o.operator_peak_rss_mib | num(1)); ""; "")
    else empty end),
  (to_entries[] | select(.key | test("^fleet")) | .value | . as $f | status($f)[],
    if $f.sidecars then
      row("fleet \($f.sidecars)"; "client patch → applied N/N, p50 / p99 ms";
          "\($f.client_patch_to_applied_p50_ms | num(0)) / \($f.client_patch_to_applied_p99_ms | num(0))";
          "ZooKeeper floor: \($f.zookeeper_floor_p50_ms | num(0)) / \($f.zookeeper_floor_p99_ms | num(0))"; ""),
      row(""; "kubectl patch → applied N/N, p50 / p99 ms";
          "\($f.patch_to_applied_p50_ms | num(0)) / \($f.patch_to_applied_p99_ms | num(0))"; ""; "")
    else empty end),
  (to_entries[] | select(.key | test("^rollout")) | .value | . as $r | status($r)[],
    if $r.sidecars then
      row("rollout \($r.sidecars)"; "patch → step 1 on canaries, p50 / p99 ms";
          "\($r.patch_to_step1_applied_p50_ms | num(0)) / \($r.patch_to_step1_applied_p99_ms | num(0))";
          "\($r.step_canaries_min)–\($r.step_canaries_max) canaries, \($r.rounds) changes"; ""),
      row(""; "patch → rolled back, p50 / p99 ms";
          "\($r.patch_to_rolled_back_p50_ms | num(0)) / \($r.patch_to_rolled_back_p99_ms | num(0))"; ""; ""),
      row(""; "ZooKeeper RSS with the fleet, MiB"; ($r.zookeeper_rss_mib_with_fleet | num(0));
          "before: \($r.zookeeper_rss_mib_before | num(0))"; "")
    else empty end),
  (.webhook // {} | . as $w | status($w)[],
    if $w.requests then
      row("webhook"; "admission p50 / p99, ms"; "\($w.p50_ms | num(2)) / \($w.p99_ms | num(2))"; ""; ""),
      row(""; "operator RSS while serving, MiB"; ($w.operator_rss_mib | num(1)); ""; "")
    else empty end)
' "$results"
echo
echo "results: $results"
if ((${#failed[@]})); then
  echo "bench: failed: ${failed[*]}" >&2
  exit 1
fi
