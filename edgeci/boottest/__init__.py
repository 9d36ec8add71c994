"""Boot tests: the candidate installed, upgraded from production and rolled back on a guest.

Guests behind one interface (base.Guest): sysroot.py (no VM), qemu.py (a VM per boot, edgeci as the
bootloader), libvirt.py (virt-install + SSH on a KVM host). scenarios.py runs install/upgrade/rollback
on any of them; edgeci.stages.boottest is the command.
"""
