# %preun of vtestd ($1: 0 on removal, 1 on upgrade): on removal, stop and
# disable the socket and the service.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable vtestd.socket vtestd.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl stop vtestd.socket vtestd.service >/dev/null 2>&1 || :
    fi
fi
