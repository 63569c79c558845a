#!/usr/bin/env bash
# A real S3 server for the tests: Ceph's RADOS Gateway (radosgw) on a
# throw-away single-node cluster (one mon, one memstore osd) on 127.0.0.1.
#
# FOR TESTS ON LOOPBACK ONLY. The Ceph daemons talk to each other with
# `auth none`, objects live in the osd's memory, and everything is gone when
# the cluster stops. (S3 requests still need SigV4 with the printed keys.)
#
# Needs the Debian packages ceph-mon, ceph-osd, radosgw and ceph-common.
# Every file (config, pid files, admin sockets, logs) is under DIR.
#
#   s3.sh start DIR PORT [MON_PORT]
#       A fresh cluster in DIR (an empty or earlier s3.sh dir): S3 on
#       127.0.0.1:PORT, the mon on MON_PORT (default PORT+1). Returns once the
#       gateway answers and an S3 user exists, printing two lines:
#           ACCESS_KEY SECRET_KEY
#           http://127.0.0.1:PORT
#       Fails with "port N already in use" when a port is taken (the caller
#       may retry with others); on any failure no daemon is left running.
#   s3.sh stop DIR
#       Kills every daemon of DIR. Leaves the files.
#   s3.sh rgw-stop DIR
#       Kills radosgw only (SIGKILL, as a crash would). The mon and osd keep
#       running, so buckets and objects survive.
#   s3.sh rgw-start DIR
#       Starts radosgw again on the same port; returns once it answers.
#
# Each request radosgw serves is a "beast:" line in DIR/log/client.rgw.s3.log
# (its default log level), e.g.
#   ... 1 beast: 0x7f..: 127.0.0.1 - tester [03/Dec/2026:14:11:03.815 +0000] "GET /b/k HTTP/1.1" 200 231 - "aws-sdk-js/3" - latency=0.004s
# Env: S3_MEM_BYTES, the capacity the osd reports (default 64 GiB; only used
# for its full-ratio checks, the data takes what it takes).
set -euo pipefail

log() { echo "[s3.sh $(date +%T.%3N)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { die "usage: $0 start DIR PORT [MON_PORT] | stop DIR | rgw-stop DIR | rgw-start DIR"; }

# The process exists and is not a zombie (PID 1 may be slow to reap, or never).
alive() {
    local state
    state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# The pid in a pid file, if that process is a daemon of THIS cluster (a pid
# file left by a killed daemon may name a pid reused since).
daemon_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && alive "$pid" || return 1
    # (grep without -q reads all its input: under pipefail, tr must not die of SIGPIPE)
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -F -- "-c $CONF " >/dev/null || return 1
    echo "$pid"
}

# Kills the daemons whose pid files are given and waits until they are gone.
# SIGKILL for radosgw and the osd: SIGTERM costs them seconds (rgw drains, the
# osd waits for the mon), and the state is throw-away. SIGTERM for the mon.
kill_daemons() {
    local pidf pid pids=() _
    for pidf in "$@"; do
        [ -e "$pidf" ] || continue
        if pid=$(daemon_pid "$pidf"); then
            case $pidf in
                */mon.*) kill -TERM "$pid" 2>/dev/null || true ;;
                *) kill -KILL "$pid" 2>/dev/null || true ;;
            esac
            pids+=("$pid")
        fi
        rm -f "$pidf"
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    for _ in $(seq 100); do
        local any=0
        for pid in "${pids[@]}"; do alive "$pid" && any=1; done
        [ $any = 0 ] && return 0
        sleep 0.05
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

stop_all() {
    kill_daemons "$DIR"/run/client.*.pid "$DIR"/run/osd.*.pid "$DIR"/run/mon.*.pid
}

# Something accepts connections on 127.0.0.1:$1 (bash's /dev/tcp: no curl needed).
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The HTTP status of GET / on 127.0.0.1:$1, or nothing when it does not answer.
http_status() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
        printf 'GET /?s3.sh-probe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
        IFS=' ' read -r -t 5 _ status _ <&3 || exit 0
        echo "$status"
    ) 2>/dev/null
}

uuid() { cat /proc/sys/kernel/random/uuid; }

# Starts radosgw and waits until it answers on $PORT. Its bind happens after
# it connected to the cluster, so a port taken meanwhile shows up in its log.
start_rgw() {
    local rgw_log=$DIR/log/client.rgw.s3.log status="" pid="" lines=0 _
    port_busy "$PORT" && die "port $PORT already in use"
    [ -e "$rgw_log" ] && lines=$(wc -l < "$rgw_log")
    radosgw -c "$CONF" -n client.rgw.s3 </dev/null >>"$DIR/log/stderr.log" 2>&1 \
        || die "radosgw did not start (see $DIR/log)"
    for _ in $(seq 600); do    # up to 60 s: the first start creates its pools
        status=$(http_status "$PORT")
        [ "$status" = 200 ] && return 0
        # (grep without -q reads all its input: under pipefail, tail must not die of SIGPIPE)
        tail -n +"$((lines + 1))" "$rgw_log" 2>/dev/null | grep 'Address already in use' >/dev/null \
            && die "port $PORT already in use"
        if [ -z "$pid" ]; then pid=$(daemon_pid "$DIR/run/client.rgw.s3.pid") || pid=""; fi
        [ -n "$pid" ] && ! alive "$pid" && die "radosgw exited (see $DIR/log/client.rgw.s3.log)"
        sleep 0.1
    done
    die "radosgw not answering on $PORT (last status: ${status:-none})"
}

[ $# -ge 2 ] || usage
COMMAND=$1
mkdir -p "$2"
DIR=$(readlink -f "$2")
[ "$DIR" != / ] || die "refusing DIR=/"
CONF=$DIR/ceph.conf

case $COMMAND in
    stop)
        [ -e "$CONF" ] || exit 0
        stop_all
        exit 0 ;;
    rgw-stop)
        [ -e "$CONF" ] || die "no cluster in $DIR"
        kill_daemons "$DIR/run/client.rgw.s3.pid"
        exit 0 ;;
    rgw-start)
        [ -e "$CONF" ] || die "no cluster in $DIR"
        # shellcheck source=/dev/null
        . "$DIR/ports"
        daemon_pid "$DIR/run/client.rgw.s3.pid" >/dev/null && exit 0
        daemon_pid "$DIR/run/mon.a.pid" >/dev/null || die "the mon of $DIR is not running"
        trap 'rc=$?; if [ $rc != 0 ]; then kill_daemons "$DIR/run/client.rgw.s3.pid"; fi' EXIT
        start_rgw
        trap - EXIT
        exit 0 ;;
    start)
        [ $# -ge 3 ] || usage
        PORT=$3
        MON_PORT=${4:-$((PORT + 1))} ;;
    *) usage ;;
esac

# --- start: a fresh cluster ---------------------------------------------------
T0=$(date +%s%N)
[ -e "$CONF" ] && stop_all
rm -rf "${DIR:?}"/{ceph.conf,ports,monmap,mon,osd,rgw,run,log,crash,keys,user.json}
mkdir -p "$DIR"/{mon,osd,rgw,run,log,crash}
port_busy "$MON_PORT" && die "port $MON_PORT already in use"
port_busy "$PORT" && die "port $PORT already in use"
printf 'PORT=%s\nMON_PORT=%s\n' "$PORT" "$MON_PORT" > "$DIR/ports"
trap 'rc=$?; if [ $rc != 0 ]; then log "start failed, logs in $DIR/log"; stop_all; fi' EXIT

FSID=$(uuid)
cat > "$CONF" <<EOF
# Written by harness/s3.sh: a throw-away test cluster on loopback.
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$MON_PORT]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
# No cephx between the daemons: loopback tests only.
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
mon warn on insecure global id reclaim allowed = false
keyring = /dev/null
# Everything under DIR, nothing in /var/lib/ceph, /var/run/ceph or /var/log/ceph.
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
crash dir = $DIR/crash
chdir = ""
# One bind attempt: a port taken between our check and the bind fails at once
# (default: 3 attempts 5 s apart).
ms bind retry count = 1
# One osd, one copy of everything.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
[mon]
mon data = $DIR/mon
mon cluster log file = $DIR/log/cluster.log
# The default 1 s per paxos round makes start-up take ~12 s instead of ~2 s.
paxos propose interval = 0.05
paxos min wait = 0.01
[osd]
osd data = $DIR/osd
osd objectstore = memstore
# Only the capacity reported for the full-ratio checks: the data lives in the osd's RAM.
memstore device bytes = ${S3_MEM_BYTES:-68719476736}
osd crush update on start = false
osd class load list = *
osd class default list = *
[client.rgw.s3]
rgw data = $DIR/rgw
# radosgw's built-in ms_mon_client_mode=secure cannot work with auth none (it hangs).
ms mon client mode = crc
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw dns name = localhost
# Deleted objects leave the osd's RAM by garbage collection, by default after 2 h.
rgw gc obj min wait = 30
rgw gc processor period = 30
EOF

ceph_cli() { timeout 60 ceph -c "$CONF" --connect-timeout 30 "$@"; }

monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$DIR/monmap" >/dev/null
ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap" --keyring /dev/null </dev/null >>"$DIR/log/stderr.log" 2>&1 \
    || die "ceph-mon --mkfs failed (see $DIR/log)"
# Returns once the mon listens (it daemonizes: its own session, pid file in run/).
if ! ceph-mon -c "$CONF" -i a </dev/null >>"$DIR/log/stderr.log" 2>&1; then
    grep -qs 'Address already in use' "$DIR/log/mon.a.log" "$DIR/log/stderr.log" && die "port $MON_PORT already in use"
    die "ceph-mon did not start (see $DIR/log)"
fi

OSD_UUID=$(uuid)
OSD_ID=$(ceph_cli osd new "$OSD_UUID")
ceph_cli osd crush add "osd.$OSD_ID" 1 root=default >/dev/null 2>&1
ceph-osd -c "$CONF" -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" </dev/null >>"$DIR/log/stderr.log" 2>&1 \
    || die "ceph-osd --mkfs failed (see $DIR/log)"
ceph-osd -c "$CONF" -i "$OSD_ID" </dev/null >>"$DIR/log/stderr.log" 2>&1 \
    || die "ceph-osd did not start (see $DIR/log)"
up=false
for _ in $(seq 300); do
    if ceph_cli osd dump 2>/dev/null | grep -q "^osd\.$OSD_ID up"; then up=true; break; fi
    sleep 0.2
done
[ "$up" = true ] || die "osd.$OSD_ID did not come up"

start_rgw

# S3 keys: 20 upper-case hex characters and 40 hex characters, like AWS's shape.
AK=$(uuid | tr -d - | tr a-f A-F | cut -c1-20)
SK=$(echo "$(uuid)$(uuid)" | tr -d - | cut -c1-40)
timeout 60 radosgw-admin -c "$CONF" user create --uid=tester --display-name=tester \
    --access-key="$AK" --secret-key="$SK" >"$DIR/user.json" 2>>"$DIR/log/stderr.log" \
    || die "radosgw-admin user create failed (see $DIR/log)"
echo "$AK $SK" > "$DIR/keys"
trap - EXIT
log "ready in $(( ($(date +%s%N) - T0) / 1000000 )) ms: http://127.0.0.1:$PORT (mon $MON_PORT, $DIR)"
echo "$AK $SK"
echo "http://127.0.0.1:$PORT"
