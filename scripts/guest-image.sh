#!/usr/bin/env bash
# The testbed's QEMU guest image (`guests: libvirt`), from Debian packages only:
#   .cache/guest/vmlinuz        the Debian kernel, extracted from its package (never installed)
#   .cache/guest/initrd.img     busybox-static + virtio modules + init (src/hostvlan/testbed/guest-init.sh)
#   .cache/guest/stamp          what it was built from (this script, the init, package versions)
# Rebuilt when the stamp changes. Needs: busybox-static (also its cpio), kmod (modinfo), apt (download).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${HOSTVLAN_GUEST_DIR:-.cache/guest}
INIT=src/hostvlan/testbed/guest-init.sh
MODULES=(virtio_pci virtio_net virtio_console)

# the newest Debian kernel package: what linux-image-amd64 depends on
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $kpkg ]] || { echo "guest-image: no linux-image-*-amd64 package known to apt" >&2; exit 1; }
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')
bbver=$(dpkg-query -W -f='${Version}' busybox-static)
want=$( { cat "$0" "$INIT"; echo "$kpkg $kver busybox-static $bbver"; } | sha256sum | cut -d' ' -f1)
if [[ -f $OUT/stamp && $(cat "$OUT/stamp") == "$want" && -f $OUT/vmlinuz && -f $OUT/initrd.img ]]; then
  exit 0
fi

mkdir -p "$OUT"
work=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
deb=$(ls "$OUT"/"${kpkg}"_*.deb 2>/dev/null | head -1 || true)
if [[ -z $deb || $deb != *"_${kver//:/%3a}_"* ]]; then
  rm -f "$OUT"/linux-image-*.deb
  (cd "$OUT" && apt-get download -q "$kpkg=$kver" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  deb=$(ls "$OUT"/"${kpkg}"_*.deb | head -1)
fi
dpkg-deb -x "$deb" "$work/k"
kdir=$(ls -d "$work"/k/lib/modules/*)
kname=$(basename "$kdir")

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
cp /bin/busybox "$root/bin/busybox"
install -m 0755 "$INIT" "$root/init"
# the modules and what they need, dependencies first (modinfo reads the files: no depmod here)
declare -A seen=()
order=()
add() {
  local name=$1 path dep
  [[ -n ${seen[$name]:-} ]] && return
  seen[$name]=1
  path=$(find "$kdir/kernel" -name "$name.ko" -o -name "$name.ko.xz" | head -1)
  [[ -n $path ]] || { echo "guest-image: module $name not in $kname" >&2; exit 1; }
  for dep in $(modinfo -F depends "$path" | tr ',' ' '); do add "$dep"; done
  case $path in
    *.xz) xz -dc "$path" > "$root/lib/modules/$name.ko" ;;
    *) cp "$path" "$root/lib/modules/$name.ko" ;;
  esac
  order+=("$name")
}
for m in "${MODULES[@]}"; do add "$m"; done
printf '%s\n' "${order[@]}" > "$root/lib/modules/order"
(cd "$root" && find . | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$work/initrd.img"
cp "$work"/k/boot/vmlinuz-* "$work/vmlinuz"
mv "$work/vmlinuz" "$OUT/vmlinuz"
mv "$work/initrd.img" "$OUT/initrd.img"
echo "$kpkg $kver" > "$OUT/kernel"
echo "$want" > "$OUT/stamp"
echo "setup: guest image ready in $OUT ($kname, modules: ${order[*]})"
