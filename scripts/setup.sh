#!/usr/bin/env bash
# Bring a fresh machine to what hostvlan needs: system packages, then .venv with the
# pinned Python dependencies and hostvlan itself. Idempotent; a stamp skips the work
# when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(systemd nftables libnftables1 iproute2 iputils-ping tcpdump iperf3 sockperf openvswitch-switch ethtool openssl  # systemd: systemd-analyze verifies the service units (tests)
  wrk apache2-utils lighttpd  # `hostvlan bench` (web server per VM, ab, wrk)
  gcc libc6-dev  # the testbed's macvtap VM stand-in and bench/frame_cost compile a page of C
  clang libbpf-dev libbpf1  # the bridge's tc/eBPF receive filter: built below, loaded by the agent
  qemu-system-x86 libvirt-daemon libvirt-clients busybox-static  # testbed guests (`guests: libvirt`)
  etcd-server etcd-client  # the replicated store (`manager --store etcd://…`, testbed `control:`)
  prometheus  # the e2e test that scrapes a testbed's manager and agents
  keepalived arping ndisc6)  # address guard: a VRRP VIP between two VMs; ARP/ND probes from VMs
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: need root to install: ${missing[*]}" >&2; exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # hostvlan runs private Open vSwitch instances (testbed, tests); a system-wide one that the
  # package may have just started is not ours to keep running
  if [[ " ${missing[*]} " == *" openvswitch-switch "* ]] && [[ -x /usr/share/openvswitch/scripts/ovs-ctl ]]; then
    /usr/share/openvswitch/scripts/ovs-ctl stop >/dev/null 2>&1 || true
  fi
  # etcd, Prometheus and keepalived run per test inside the run's namespaces and work dir; the
  # system-wide daemons the packages may have just started are not ours to keep running
  for pkg_svc in etcd-server:etcd prometheus:prometheus keepalived:keepalived; do
    pkg=${pkg_svc%%:*} svc=${pkg_svc##*:}
    [[ " ${missing[*]} " == *" $pkg "* ]] || continue
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    else
      [[ -x /etc/init.d/$svc ]] && "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
  # the bench runs its own lighttpd inside each VM namespace; the packaged service must not
  # serve in the root namespace (stopped, and kept from starting at boot; there may be no systemd)
  if [[ " ${missing[*]} " == *" lighttpd "* ]]; then
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
      systemctl disable --now lighttpd >/dev/null 2>&1 || true
    else
      [[ -x /etc/init.d/lighttpd ]] && /etc/init.d/lighttpd stop >/dev/null 2>&1 || true
      update-rc.d lighttpd disable >/dev/null 2>&1 || true
    fi
  fi
fi

# testbed guests: libvirt's QEMU driver resolves its compiled-in user even when qemu.conf runs
# QEMU as root (libvirt-daemon-system would create it, but pulls in systemd); then the image
if ! getent passwd libvirt-qemu >/dev/null && [[ $(id -u) -eq 0 ]]; then
  useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin --user-group libvirt-qemu
fi
bash scripts/guest-image.sh

# the bridge's BPF programs (src/hostvlan/datapath/bpf/*.c), each rebuilt when a source changed
for bpf_src in src/hostvlan/datapath/bpf/*.c; do
  bpf_obj=${bpf_src%.c}.o
  newer=0
  for dep in "$bpf_src" src/hostvlan/datapath/bpf/hv_rx.c src/hostvlan/datapath/bpf/*.h; do
    [[ -f $dep && $dep -nt $bpf_obj ]] && newer=1
  done
  if [[ ! -f $bpf_obj || $newer == 1 ]]; then
    clang -O2 -g -Wall -Werror -target bpf -I"/usr/include/$(gcc -dumpmachine)" -c "$bpf_src" -o "$bpf_obj.tmp"
    mv "$bpf_obj.tmp" "$bpf_obj"
    echo "setup: built $bpf_obj"
  fi
done

PY=${PYTHON:-python3}
stamp=.venv/.hostvlan-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -x .venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.lock
.venv/bin/python -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python --version))"
