#!/usr/bin/env bash
# `make test`: the suite in two lanes at once, each a pytest run of its own.
#
# - graph: the tests that start a ROS graph (marked `graph`), one after another. Each was made
#   to hold with one other process keeping a core busy, and the other lane is at most that.
# - rest: everything else, with one torch thread, so that it keeps to one core, and at nice 10,
#   so that a graph test's processes come first when they want both cores (run at the same
#   priority, a slow-inference test got 99 commands where it asks for more than 100); also the
#   `graph` tests marked `beside`, whose ROS processes start one at a time.
#
# Run one after the other, the suite took 31 minutes on a 2-core machine, with one core idle
# most of the time. Each lane has a ROS domain of its own (100 apart), so that no node of one
# meets the other's. Arguments go to both pytest runs. Exit status: the first failing lane's.
set -uo pipefail
set -m  # each lane a job of its own, with SIGINT not ignored (a script's `&` would ignore it)
py=${PY:-.venv/bin/python}
domain=${ROS_DOMAIN_ID:-$(($$ % 90 + 5))}
logdir=$(mktemp -d)

lane() {  # name, domain, pytest's -m expression, arguments; its lines prefixed with its name
  local name=$1 dom=$2 expr=$3
  shift 3
  ROS_DOMAIN_ID=$dom exec ${NICE:-} "$py" -m pytest -p no:cacheprovider -m "$expr" "$@" \
    > >(sed -u "s/^/$(printf %-5s "$name") | /" | tee "$logdir/$name.txt") 2>&1
}

finished() {  # pid: its exit status in $rc once it has ended (wait returns early on a trapped signal)
  while true; do
    wait "$1"
    rc=$?
    kill -0 "$1" 2>/dev/null || return 0
  done
}

# the graph lane a line per test (its 65 take most of the run), the rest a dot per test
lane graph "$domain" "graph and not beside" -v "$@" &
graph_pid=$!
OMP_NUM_THREADS=1 NICE="nice -n 10" lane rest $(((domain + 100) % 233)) "not graph or beside" -q "$@" &
rest_pid=$!
set +m  # (no job notices)
# Ctrl-C or a SIGTERM reaches this script: each lane's pytest stops as on a SIGTERM (conftest.py)
trap 'kill -TERM $graph_pid $rest_pid 2>/dev/null' INT TERM
finished $graph_pid
graph=$rc
finished $rest_pid
rest=$rc
sleep 0.5  # the last lines through sed and tee
# exit 5: this lane had none of the tests asked for (`make test ARGS=tests/test_x.py`)
((graph == 5 && rest != 5)) && graph=0
((rest == 5 && graph == 0)) && rest=0
echo
for l in graph rest; do
  rc=${!l}
  echo "make test: the $l lane $( ((rc == 0)) && echo passed || echo "FAILED (exit $rc)"):" \
    "$(tail -n 1 "$logdir/$l.txt" 2>/dev/null | sed 's/^[a-z ]* | //')"
done
rm -rf "$logdir"
((graph != 0)) && exit $graph
exit $rest
