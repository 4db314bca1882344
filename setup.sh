#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (run as root):
#   ./setup.sh demo   install everything, build, and run the demos (prefilter, then a lab)
#   ./setup.sh test   install everything, build, and run lint, types and the test suite
#   ./setup.sh        install everything and build, nothing else
# Idempotent: packages, the venv and the BPF objects are only (re)made when missing or stale.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

APT_PACKAGES=(
  clang llvm libbpf-dev bpftool make gcc pkg-config libelf-dev
  python3 python3-venv python3-dev
  iproute2 iptables nftables ipset conntrack ethtool iputils-ping procps util-linux kmod
  sockperf iperf3 wrk nginx-light netsniff-ng etcd-server etcd-client
)
VENV=.venv
STAMP="$VENV/.sluice-deps"

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "setup.sh must run as root (it installs packages and loads BPF programs)" >&2
    exit 1
  fi
}

install_packages() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    # Benchmark servers (nginx, iperf3) are run by `sluice bench` inside lab namespaces;
    # their packages must not start host-wide daemons, so service starts are refused
    # while installing (policy-rc.d exit 101), unless the machine already has a policy.
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      guard=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod 755 "$guard"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || { rm -f "$guard"; return 1; }
    if [ -n "$guard" ]; then rm -f "$guard"; fi
  fi
}

install_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating the virtual environment at $VENV"
    /usr/bin/python3 -m venv "$VENV"
  fi
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ] || [ ! -x "$VENV/bin/sluice" ]; then
    log "installing sluice and its Python dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    echo "$want" > "$STAMP"
  fi
}

build_bpf() {
  log "building BPF objects (bpf/*.c)"
  make -s -C bpf
}

mount_filesystems() {
  if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs at /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
  fi
}

run_tests() {
  log "ruff"
  "$VENV/bin/ruff" check src tests
  log "mypy (strict)"
  "$VENV/bin/mypy"
  log "pytest"
  "$VENV/bin/pytest" -q "$@"
}

run_demo() {
  log "sluice doctor"
  "$VENV/bin/sluice" doctor
  log "sluice validate -f examples/"
  "$VENV/bin/sluice" validate -f examples/
  log "prefilter demo: two namespaces, real packets, a map written from Python"
  "$VENV/bin/python" examples/prefilter_demo.py
  run_lab_demo
}

run_lab_demo() {
  local lab=demo sluice="$VENV/bin/sluice"
  log "lab demo: two nodes, four pods (examples/lab-demo.yaml)"
  "$sluice" lab down --name "$lab" >/dev/null
  trap '"$VENV/bin/sluice" lab down --name demo' EXIT
  "$sluice" lab up --name "$lab" -f examples/lab-demo.yaml
  "$sluice" lab get --name "$lab"
  log "lab demo: pods talking (TCP and UDP, IPv4 and IPv6, same node, across nodes)"
  local probe
  for probe in "demo/client demo/web-1 8080" "demo/client demo/web-2 5353 --protocol UDP" \
               "demo/web-1 demo/web-2 8080 --family 6" "demo/web-2 demo/client 7000 --family 6" \
               "node/node1 demo/web-1 8080" "external demo/web-2 8080" \
               "demo/web-1 node/node2 9100"; do
    # shellcheck disable=SC2086
    "$sluice" lab probe --name "$lab" $probe
  done
  log "lab demo: removing the lab"
  "$sluice" lab down --name "$lab"
  trap - EXIT
}

main() {
  local action=${1:-install}
  [ $# -gt 0 ] && shift
  case "$action" in
    install|demo|test) ;;
    -h|--help|help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown action '$action' (expected install, demo or test)" >&2; exit 2 ;;
  esac
  need_root
  install_packages
  install_venv
  build_bpf
  mount_filesystems
  case "$action" in
    demo) run_demo ;;
    test) run_tests "$@" ;;
  esac
}

main "$@"
