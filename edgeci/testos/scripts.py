"""The two shell programs of the test OS, run by busybox sh (see edgeci.testos for the protocol).

PREPARE_ROOT is the initramfs /init: a minimal ostree-prepare-root. TESTOS_INIT is the deployed
tree's /sbin/init: it runs the greenboot checks and prints the EDGECI- console protocol.
"""

PREPARE_ROOT = r"""#!/bin/sh
# edgeci test OS initramfs /init: a minimal ostree-prepare-root (busybox sh).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Keep kernel messages off the console from here on: the EDGECI- lines must not be interleaved.
echo 1 > /proc/sys/kernel/printk

fail() {
    echo "edgeci-initramfs: error: $*"
    sync
    poweroff -f
    sleep 5
    exit 1
}

root=/dev/vda
rootfstype=ext4
ostree=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root=${arg#root=} ;;
        rootfstype=*) rootfstype=${arg#rootfstype=} ;;
        ostree=*) ostree=${arg#ostree=} ;;
    esac
done
[ -n "$ostree" ] || fail "no ostree= kernel argument"

while read -r module; do
    [ -n "$module" ] || continue
    insmod "$module" || fail "insmod $module failed"
done < /etc/edgeci/modules

tries=0
while [ ! -b "$root" ]; do
    tries=$((tries + 1))
    [ "$tries" -le 200 ] || fail "root device $root did not appear"
    sleep 0.05
done
mount -t "$rootfstype" -o rw "$root" /sysroot || fail "cannot mount $root ($rootfstype) at /sysroot"

deploy=$(readlink -f "/sysroot$ostree")
case "$deploy" in
    /sysroot/ostree/deploy/*/deploy/*) ;;
    *) fail "ostree=$ostree does not resolve to a deployment (got '$deploy')" ;;
esac
[ -d "$deploy" ] || fail "deployment $deploy is not a directory"
osname=${deploy#/sysroot/ostree/deploy/}
osname=${osname%%/*}
serialized=${deploy##*/}
checksum=${serialized%.*}

mount --bind "$deploy" /newroot || fail "cannot bind-mount $deploy"
mount --bind /sysroot /newroot/sysroot || fail "cannot bind the sysroot at /newroot/sysroot"
mount --bind "/sysroot/ostree/deploy/$osname/var" /newroot/var || fail "cannot bind /var of $osname"
mount --bind /newroot/usr /newroot/usr && mount -o remount,bind,ro /newroot/usr
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || fail "cannot mount /run"
mkdir -p /newroot/run/edgeci
echo "$checksum" > /newroot/run/edgeci/booted
echo "${deploy#/sysroot}" > /newroot/run/edgeci/deployment
: > /newroot/run/ostree-booted

mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""

TESTOS_INIT = r"""#!/bin/sh
# edgeci test OS /sbin/init: run the greenboot checks, print the EDGECI- protocol, power off.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc 2>/dev/null
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp 2>/dev/null
mkdir -p /var/home /var/roothome /var/tmp /var/log 2>/dev/null
[ -r /etc/hostname ] && hostname -F /etc/hostname 2>/dev/null

timeout_s=60
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        edgeci.check_timeout=*) timeout_s=${arg#edgeci.check_timeout=} ;;
    esac
done

version=$(sed -n 's/^VERSION=//p' /etc/os-release 2>/dev/null | head -n 1 | tr -d "\"'")
commit=$(cat /run/edgeci/booted 2>/dev/null)
# the firmware may have left a partial line ("Booting from ROM..") on the console: start a fresh one
echo
echo "EDGECI-BOOT commit=${commit:-unknown} version=${version:-unknown}"

passed=0
failed=0
required_failed=0
for kind in required wanted; do
    for script in /etc/greenboot/check/$kind.d/*; do
        [ -f "$script" ] && [ -x "$script" ] || continue
        name=${script##*/}
        name=${name%.sh}
        name=${name#[0-9][0-9]-}
        name=$(echo "$name" | tr -c 'A-Za-z0-9._\n-' '_')
        timeout "$timeout_s" "$script" > /tmp/edgeci-check.out 2>&1 < /dev/null
        rc=$?
        output=$(head -c 4096 /tmp/edgeci-check.out | base64 -w 0)
        if [ "$rc" -eq 0 ]; then
            result=pass
            passed=$((passed + 1))
        else
            result=fail
            failed=$((failed + 1))
            [ "$kind" = required ] && required_failed=$((required_failed + 1))
        fi
        echo "EDGECI-CHECK name=$name kind=$kind result=$result output=$output"
    done
done

status=healthy
[ "$required_failed" -eq 0 ] || status=unhealthy
echo "EDGECI-DONE status=$status passed=$passed failed=$failed"
sync
poweroff -f
"""
