#!/bin/busybox sh
# PID 1 of the testbed's QEMU guests (initramfs /init, built by scripts/guest-image.sh).
# Kernel command line: hv.ip=ADDR/LEN (IPv4 of eth0), optional hv.ip6=ADDR/LEN,
# hv.port=NAME (the virtio-serial port of the exec channel, default org.hostvlan.exec).
# Exec channel (host -> guest, one line per command):  ID BASE64(shell script)
# answer (guest -> host):  OUT ID / base64 of stdout / ERR ID / base64 of stderr / END ID STATUS
/bin/busybox --install -s /bin
export PATH=/bin HOME=/
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m.ko" || echo "hostvlan-guest: insmod $m failed"; done
ip4=
ip6=
port=org.hostvlan.exec
for w in $(cat /proc/cmdline); do
  case $w in
    hv.ip=*) ip4=${w#hv.ip=} ;;
    hv.ip6=*) ip6=${w#hv.ip6=} ;;
    hv.port=*) port=${w#hv.port=} ;;
  esac
done
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
if [ -n "$ip6" ]; then
  ip -6 addr add "$ip6" dev eth0 nodad
else  # no IPv6 wanted: keep the guest quiet (no ND/MLD)
  echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 2>/dev/null
fi
[ -n "$ip4" ] && ip addr add "$ip4" dev eth0
ip link set eth0 up
dev=
i=0
while [ -z "$dev" ] && [ $i -lt 200 ]; do
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = "$port" ] && dev=/dev/${d##*/}
  done
  [ -n "$dev" ] || { sleep 0.05; i=$((i + 1)); }
done
echo "hostvlan-guest: ready eth0=$(cat /sys/class/net/eth0/address) ip=$ip4 channel=$dev"
[ -n "$dev" ] || { echo "hostvlan-guest: no virtio-serial port $port"; exec sh; }
# The port is opened once and never closed: closing it discards what the host already
# sent (a command of the next connection). While no host end is connected, read
# returns EOF at once: wait and read again, every 0.1 s for 5 s after a command, then
# every second (each wake-up costs a TCG guest a fork: idle, it stays at a few % of a core).
exec 3<>"$dev"
idle=0
while :; do
  if read -r id b64 <&3; then
    [ -n "$id" ] || continue
    echo "$b64" | base64 -d > /tmp/cmd
    sh /tmp/cmd < /dev/null > /tmp/out 2> /tmp/err
    rc=$?
    { echo "OUT $id"; base64 /tmp/out; echo "ERR $id"; base64 /tmp/err; echo "END $id $rc"; } >&3
    idle=0
  elif [ $idle -lt 50 ]; then
    idle=$((idle + 1))
    sleep 0.1
  else
    sleep 1
  fi
done
