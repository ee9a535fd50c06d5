# %post of vtestd ($1: 1 on installation, 2 on upgrade): the system user and
# groups, the runtime directory, and vtestd.socket enabled (and started
# where systemd is running). Without a running systemd (an image build, a
# chroot, a container) nothing is started.
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers vtestd.conf || :
else
    for group in vtestd-clients vtestd-admin render; do
        getent group "$group" >/dev/null || groupadd --system "$group" || :
    done
    if ! getent passwd vtestd >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir / \
            --shell /sbin/nologin --comment "vtestd vtest server" vtestd || :
    fi
    usermod --append --groups render,vtestd-admin vtestd || :
fi
if [ -d /run/systemd/system ]; then
    systemd-tmpfiles --create vtestd.conf >/dev/null 2>&1 || :
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    # Works offline too (it only writes the symlinks).
    systemctl --no-reload enable vtestd.socket >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl start vtestd.socket >/dev/null 2>&1 || :
fi
