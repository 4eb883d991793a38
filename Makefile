# robot-learning: `make demo` and `make test` do all set-up themselves on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
ROS_PKG_FILES := $(shell find ros2_ws/src/robot_learning_ros -type f -not -path '*/__pycache__/*' 2>/dev/null)

# ROS 2 from the venv's wheels; discovery kept on this machine (a robot LAN overrides it).
export AMENT_PREFIX_PATH := $(abspath $(VENV))$(if $(AMENT_PREFIX_PATH),:$(AMENT_PREFIX_PATH))
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 90 + 5 )))
export MUJOCO_GL ?= egl
# shared memory for camera images, UDP on loopback only (see the file; not for a robot LAN)
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(abspath ros2_ws/src/robot_learning_ros/config/fastdds_localhost.xml)
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo test test-lerobot bench lint clean

setup: $(STAMP)

$(STAMP): scripts/setup.sh pyproject.toml requirements-ros.txt $(ROS_PKG_FILES)
	bash scripts/setup.sh
	touch $@

demo: setup
	$(PY) -m robot_learning.cli demo

# two lanes at once: pure computation beside the rest, at idle priority (scripts/test.sh);
# ARGS go to pytest, e.g. make test ARGS="-x -k durability"
test: setup
	PY=$(PY) bash scripts/test.sh $(ARGS)

# our LeRobot export loaded by LeRobot's own reader, in an environment of its own (6 GB: torch + torchvision)
test-lerobot: setup
	bash scripts/lerobot_env.sh .venv-lerobot
	LEROBOT_ENV=$(abspath .venv-lerobot) $(PY) -m pytest -q tests/test_lerobot_reader.py

bench: setup
	$(PY) -m benchmarks $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check robot_learning ros2_ws tests benchmarks

clean:
	rm -rf $(VENV) .venv-lerobot runs build *.egg-info
