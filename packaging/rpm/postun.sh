# %postun of vtestd ($1: 0 on removal, 1 on upgrade): forget the units; on an
# upgrade a running broker restarts on the new binary (the socket, held by
# systemd, keeps accepting meanwhile). The vtestd user and groups are kept.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart vtestd.service >/dev/null 2>&1 || :
    fi
fi
