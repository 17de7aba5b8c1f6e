# Sourced by scripts/test.sh: install the system packages the tests need, if missing.
# pg_autoctl (pg_auto_failover; Debian's postgresql-15-auto-failover) runs the clusters
# of the failover tests. Only root with apt-get installs it; elsewhere a note names the
# package. AIOLMDB_TEST_POSTGRES=0 (the PostgreSQL tests skipped) skips this too.
set -euo pipefail

pg_autoctl_package=postgresql-15-auto-failover

have_pg_autoctl() {
    local bindir
    bindir=$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)
    command -v pg_autoctl >/dev/null 2>&1 || [ -x "$bindir/pg_autoctl" ]
}

# apt-get install, quiet; its output goes to the file $1.
apt_install() {
    local log=$1
    shift
    # Lock::Timeout: wait for another apt or dpkg run rather than fail at once.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "$@" >"$log" 2>&1
}

install_pg_autoctl() {
    if [ "${AIOLMDB_TEST_POSTGRES:-}" = 0 ] || have_pg_autoctl; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "note: no pg_autoctl, which the failover tests need:" \
            "install $pg_autoctl_package (this needs root and apt-get)" >&2
        return 0
    fi
    local log
    log=$(mktemp)
    # A fresh image may have no package lists yet: fetch them only then.
    if ! apt_install "$log" "$pg_autoctl_package"; then
        if ! { apt-get update -qq >"$log" 2>&1 && apt_install "$log" "$pg_autoctl_package"; }; then
            echo "could not install $pg_autoctl_package (for pg_autoctl):" >&2
            cat "$log" >&2
            rm -f "$log"
            return 1
        fi
    fi
    rm -f "$log"
    if ! have_pg_autoctl; then
        echo "$pg_autoctl_package is installed, yet no pg_autoctl is on PATH" >&2
        return 1
    fi
    echo "installed $pg_autoctl_package (pg_autoctl)" >&2
}

install_pg_autoctl
