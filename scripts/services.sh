#!/usr/bin/env bash
# Start (installing first where missing, when run as root) the services the tests talk to:
# MariaDB on 127.0.0.1:3306 (root, no password, database `test`, LOAD DATA LOCAL allowed).
# Idempotent: does nothing for a service that already answers.
set -uo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    log "cannot install $* without root; install it and re-run"
    return 1
  fi
  if [ -z "${_APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null && _APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

mysql_ok() { mysql --protocol=tcp -h127.0.0.1 -uroot -e 'SELECT 1' >/dev/null 2>&1; }

start_mariadb() {
  if mysql_ok; then
    return 0
  fi
  if [ ! -x /usr/sbin/mariadbd ]; then
    log "installing mariadb-server"
    apt_install mariadb-server mariadb-client || return 1
  fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  log "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  for _ in $(seq 1 60); do
    mysql_ok && break
    # A fresh install lets root in over the socket only: open TCP login without a password.
    if mysql -uroot -e 'SELECT 1' >/dev/null 2>&1; then
      mysql -uroot -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
        GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
        ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
        FLUSH PRIVILEGES;" || true
    fi
    sleep 1
  done
  mysql_ok || { log "MariaDB did not come up on 127.0.0.1:3306"; return 1; }
}

start_mariadb || exit 1
mysql --protocol=tcp -h127.0.0.1 -uroot -e "CREATE DATABASE IF NOT EXISTS test; SET GLOBAL local_infile = 1;"
log "MariaDB ready on 127.0.0.1:3306"
