#!/usr/bin/env bash
# `make test`: the suite in two lanes at once, each a pytest run of its own.
#
# - graph: the tests that start a ROS graph (marked `graph`), one after another. Each was made
#   to hold with one other process keeping a core busy, and the other lane is at most that.
# - rest: everything else, with one torch thread, so that it keeps to one core; also the `graph`
#   tests marked `beside`, whose ROS processes start one at a time.
#
# Run one after the other, the suite took 31 minutes on a 2-core machine, with one core idle
# most of the time. Each lane has a ROS domain of its own (100 apart), so that no node of one
# meets the other's. Arguments go to both pytest runs. Exit status: the first failing lane's.
set -uo pipefail
py=${PY:-.venv/bin/python}
domain=${ROS_DOMAIN_ID:-$(($$ % 90 + 5))}
logdir=$(mktemp -d)
trap 'kill -TERM $graph_pid 2>/dev/null; wait $graph_pid 2>/dev/null' INT TERM

ROS_DOMAIN_ID=$domain "$py" -m pytest -q -p no:cacheprovider -m "graph and not beside" "$@" \
  > >(sed -u 's/^/graph | /' | tee "$logdir/graph.txt") 2>&1 &
graph_pid=$!
ROS_DOMAIN_ID=$(((domain + 100) % 233)) OMP_NUM_THREADS=1 "$py" -m pytest -q -p no:cacheprovider \
  -m "not graph or beside" "$@" > >(sed -u 's/^/rest  | /' | tee "$logdir/rest.txt") 2>&1
rest=$?
wait $graph_pid
graph=$?
wait  # the lanes' output, to its last line
# exit 5: this lane had none of the tests asked for (`make test ARGS=tests/test_x.py`)
((graph == 5 && rest != 5)) && graph=0
((rest == 5 && graph == 0)) && rest=0
echo
echo "make test: the graph lane $( ((graph == 0)) && echo passed || echo "FAILED (exit $graph)"): $(tail -n 1 "$logdir/graph.txt" | sed 's/^graph | //')"
echo "make test: the rest lane $( ((rest == 0)) && echo passed || echo "FAILED (exit $rest)"): $(tail -n 1 "$logdir/rest.txt" | sed 's/^rest  | //')"
rm -rf "$logdir"
((graph != 0)) && exit $graph
exit $rest
