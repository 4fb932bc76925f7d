# Shared helpers for the tests/bench/*.sh benchmarks. Source it; do not run it.
# Everything it starts is recorded in BENCH_PIDS and killed by bench_cleanup
# (installed as an EXIT trap by bench_init).

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH_PIDS=()
BENCH_TMP=""

bench_cleanup() {
    local pid
    for pid in "${BENCH_PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            # give it a moment, then insist
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$BENCH_TMP" ] && [ -z "${KEEP:-}" ]; then
        rm -rf "$BENCH_TMP"
    elif [ -n "$BENCH_TMP" ]; then
        echo "kept $BENCH_TMP" >&2
    fi
}

# bench_init NAME: temp dir, trap, and a private copy of the edm binary (other
# people rebuild target/release/edm while we run).
bench_init() {
    BENCH_TMP=$(mktemp -d "/tmp/edm-bench-$1.XXXXXX")
    trap bench_cleanup EXIT
    set -o errtrace
    trap '[[ $- == *e* ]] && echo "error: ${BASH_SOURCE[0]}:$LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR
    trap 'exit 130' INT TERM
    local src=${EDM:-$BENCH_ROOT/target/release/edm}
    if [ ! -x "$src" ]; then
        echo "no edm binary at $src: run cargo build --release -p edm (or set EDM=)" >&2
        exit 2
    fi
    cp "$src" "$BENCH_TMP/edm"
    EDM_BIN=$BENCH_TMP/edm
    if [ -x /usr/bin/time ]; then TIME_BIN=/usr/bin/time; else TIME_BIN=""; fi
}

# free_port: a random TCP port that no socket uses, below the kernel's
# ephemeral range (so no outgoing connection grabs it before we bind).
free_port() {
    local p i lo
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
    for i in $(seq 1 200); do
        p=$(shuf -i 10000-$((lo - 1)) -n 1)
        if [ -z "$(ss -Htan "sport = :$p")" ]; then
            echo "$p"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

# wait_port PORT LOG [SECONDS]: until something listens on 127.0.0.1:PORT;
# fails (showing LOG) if the server SINK_PID died or never listened.
wait_port() {
    local port=$1 log=$2 limit=${3:-10} i
    for i in $(seq 1 $((limit * 20))); do
        if [ -n "$(ss -Htln "sport = :$port")" ]; then return 0; fi
        kill -0 "$SINK_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "nothing listens on port $port (server pid $SINK_PID); its log:" >&2
    cat "$log" >&2
    return 1
}

# start_smtp_sink PORT LOGFILE [extra flags...]: postfix smtp-sink in the
# background; sets SINK_PID.
start_smtp_sink() {
    local port=$1 log=$2
    shift 2
    local user=()
    [ "$(id -u)" = 0 ] && user=(-u nobody)
    /usr/sbin/smtp-sink "${user[@]}" "$@" 127.0.0.1:"$port" 1024 >"$log" 2>&1 &
    SINK_PID=$!
    BENCH_PIDS+=("$SINK_PID")
    wait_port "$port" "$log"
}

# start_edm_sink PORT LOGFILE [edm sink flags...]: edm's own sink; sets SINK_PID.
start_edm_sink() {
    local port=$1 log=$2
    shift 2
    "$EDM_BIN" sink --listen 127.0.0.1:"$port" "$@" >"$log" 2>&1 &
    SINK_PID=$!
    BENCH_PIDS+=("$SINK_PID")
    wait_port "$port" "$log"
}

# stop_pid PID: stop one server we started.
stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# make_campaign DIR N SIZE PORT [delivery lines...]
# Writes DIR/{campaign.toml,recipients.csv,templates/*}. SIZE is `4k` (text +
# HTML, about 4 KB rendered) or `1k` (text only, about 1 KB rendered).
make_campaign() {
    local dir=$1 n=$2 size=$3 port=$4
    shift 4
    mkdir -p "$dir/templates"
    awk -v n="$n" 'BEGIN {
        print "id,email,first_name,last_name,plan,city";
        split("free team pro enterprise", plans, " ");
        split("Lisbon Oslo Lagos Quito Pune Osaka Perth Tunis", cities, " ");
        for (i = 1; i <= n; i++)
            printf "%d,user%d@d%d.example.com,First%d,Last%d,%s,%s\n", i, i, i % 97, i, i, plans[i % 4 + 1], cities[i % 8 + 1];
    }' >"$dir/recipients.csv"
    local para="Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat."
    local bodies
    if [ "$size" = 4k ]; then
        {
            echo "Hi {{first_name}} {{last_name}},"
            echo
            echo "Your {{plan}} plan in {{city}} is ready. Account: {{email}} (#{{id}})."
            for i in 1 2 3 4 5 6; do echo; echo "$para"; done
            echo
            echo "Unsubscribe: https://bench.example/u/{{id}}"
        } >"$dir/templates/body.txt.hbs"
        {
            echo '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Bench</title></head>'
            echo '<body style="font-family: Helvetica, Arial, sans-serif; color: #222;">'
            echo '<h1>Hello {{first_name}} {{last_name}}</h1>'
            echo '<p>Your <strong>{{plan}}</strong> plan in {{city}} is ready ({{email}}).</p>'
            for i in 1 2 3 4 5 6; do echo "<p>$para</p>"; done
            echo '<p><a href="https://bench.example/u/{{id}}">Unsubscribe</a></p></body></html>'
        } >"$dir/templates/body.html.hbs"
        bodies=$'html = "templates/body.html.hbs"\ntext = "templates/body.txt.hbs"'
    else
        {
            echo "Hi {{first_name}} {{last_name}},"
            echo
            echo "Your {{plan}} plan in {{city}} is ready. Account: {{email}} (#{{id}})."
            echo
            echo "$para"
            echo "$para"
            echo
            echo "Unsubscribe: https://bench.example/u/{{id}}"
        } >"$dir/templates/body.txt.hbs"
        bodies='text = "templates/body.txt.hbs"'
    fi
    {
        cat <<TOML
[campaign]
name = "bench"
from = "Bench <bench@sender.example.com>"
subject = "Hello {{first_name}}, your {{plan}} plan"
$bodies
recipients = "recipients.csv"
list_unsubscribe = "https://bench.example/u/{{id}}"

[smtp]
host = "127.0.0.1"
port = $port
security = "none"
connect_timeout = "5s"

[delivery]
TOML
        local l
        for l in "$@"; do echo "$l"; done
    } >"$dir/campaign.toml"
}

# peak_rss_kb TIMEFILE: "Maximum resident set size" from /usr/bin/time -v.
peak_rss_kb() {
    awk -F': ' '/Maximum resident set size/ {print $2}' "$1"
}

now_s() { date +%s.%N; }

# status_field DIR FIELD: one number from `edm status DIR --json`.
status_field() {
    "$EDM_BIN" status "$1" --json | jq -r ".$2"
}
