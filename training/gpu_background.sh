#!/usr/bin/env bash
# Run a long job on a lent GPU machine across several calls of at most 10 minutes each: start it in
# its own process session (it outlives the call that started it), then wait on it call after call
# until it ends. The machine goes back after 30 s without a call, so the calls must follow each
# other closely; each `wait` returns as soon as the job ends, so no device time idles after it.
#   gpu_background.sh start NAME CMD...   start CMD (in a copy of this tree, safe from the next call's
#                                         sync) with its output in $STAGE/NAME.log; prints its pid
#   gpu_background.sh wait NAME SECONDS   wait until the job ends or SECONDS pass; print the log's tail
#                                         and RUNNING or FINISHED (exit status in $STAGE/NAME.rc)
#   gpu_background.sh stop NAME           interrupt the job (SIGINT to its whole process group, as
#                                         Ctrl-C would: Python jobs end through KeyboardInterrupt);
#                                         never `pkill -f PATTERN`, whose pattern also matches the
#                                         calling command line and kills the call itself
set -euo pipefail
STAGE=${STAGE:-/tmp/asr}
mkdir -p "$STAGE"
case "$1" in
    start)
        name=$2; shift 2
        tree="$STAGE/$name.tree"
        rm -rf "$tree" && mkdir -p "$tree" && cp -r asr training app eval pyproject.toml "$tree"/
        rm -f "$STAGE/$name.rc"
        # the job records its own exit status, so `wait` needs no process matching
        # (every descriptor of the background group points at the log: a caller that captures this
        # call's output must not wait for the job)
        (cd "$tree" && exec setsid nohup bash -c '"$@"; echo $? > "'"$STAGE/$name.rc"'"' _ "$@") \
            > "$STAGE/$name.log" 2>&1 < /dev/null &
        # a background subshell leads no process group, so setsid execs in place: $! leads the new one
        echo $! > "$STAGE/$name.pid"
        echo "started $name" ;;
    wait)
        name=$2 seconds=$3
        for _ in $(seq 1 "$seconds"); do
            [ -e "$STAGE/$name.rc" ] && break
            sleep 1
        done
        grep -E "step|Error|error|Traceback|validation" "$STAGE/$name.log" | tail -6 || true
        if [ -e "$STAGE/$name.rc" ]; then echo "FINISHED (exit $(cat "$STAGE/$name.rc"))"; else echo RUNNING; fi ;;
    stop)
        name=$2
        if [ ! -e "$STAGE/$name.rc" ] && kill -INT -- "-$(cat "$STAGE/$name.pid")" 2>/dev/null; then
            echo "interrupted $name"
        else
            echo "$name had already ended"
        fi ;;
    *)
        echo "usage: gpu_background.sh start NAME CMD... | wait NAME SECONDS | stop NAME" >&2; exit 2 ;;
esac
