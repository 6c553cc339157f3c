#!/usr/bin/env bash
# Start (installing first where missing, when run as root) the services the tests talk to:
# MariaDB on 127.0.0.1:3306 (root, no password, database `test`, LOAD DATA LOCAL allowed),
# Redis on 127.0.0.1:6379 (Celery broker), PostgreSQL on 127.0.0.1:5432 (Dagster instance storage),
# and Chromium with its driver (the UI test). Idempotent: does nothing for what is already there.
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

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do
    port_open "$1" && return 0
    sleep 1
  done
  log "nothing answers on 127.0.0.1:$1"
  return 1
}

start_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null || apt_install redis-server || return 1
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_port 6379
}

start_postgres() {
  port_open 5432 || {
    [ -d /etc/postgresql ] || apt_install postgresql || return 1
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    wait_port 5432 || return 1
  }
  # Tests connect as postgres over TCP without a password (a throwaway local cluster).
  if ! psql -h 127.0.0.1 -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    hba=$(su postgres -c "psql -tAc 'SHOW hba_file'" 2>/dev/null)
    if [ -n "$hba" ]; then
      sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
      su postgres -c "psql -tAc 'SELECT pg_reload_conf()'" >/dev/null
    fi
  fi
}

install_chromium() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return 0
  log "installing chromium and chromium-driver (UI test)"
  apt_install chromium chromium-driver
}

start_mariadb || exit 1
mysql --protocol=tcp -h127.0.0.1 -uroot -e "CREATE DATABASE IF NOT EXISTS test; SET GLOBAL local_infile = 1;"
log "MariaDB ready on 127.0.0.1:3306"
start_redis && log "Redis ready on 127.0.0.1:6379" || exit 1
start_postgres && log "PostgreSQL ready on 127.0.0.1:5432" || exit 1
install_chromium || exit 1
