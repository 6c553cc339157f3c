#!/usr/bin/env bash
# Start (installing first where missing, when run as root) the services the tests talk to:
# MariaDB on 127.0.0.1:3306 (root, no password, database `test`, LOAD DATA LOCAL allowed),
# Redis on 127.0.0.1:6379 (Celery broker), RabbitMQ on 127.0.0.1:5672 (the other Celery broker,
# guest/guest), PostgreSQL on 127.0.0.1:5432 (Dagster instance storage), and Chromium with its driver
# (the UI test). Idempotent: does nothing for what is already there.
# With arguments, only those: `bash scripts/services.sh rabbitmq redis`.
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
  for _ in $(seq 1 "${2:-60}"); do
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

start_rabbitmq() {
  port_open 5672 && return 0
  [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server || return 1
  log "starting RabbitMQ"
  # As root the wrapper runs the server as the rabbitmq user; -detached returns once it is forked.
  # guest/guest may log in from loopback, which is all the tests and a one-host deployment need.
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 120  # the Erlang VM boots in 10-30 s on a busy 2-core machine
}

install_chromium() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return 0
  log "installing chromium and chromium-driver (UI test)"
  apt_install chromium chromium-driver
}

start_mariadb_ready() {
  start_mariadb || return 1
  mysql --protocol=tcp -h127.0.0.1 -uroot -e "CREATE DATABASE IF NOT EXISTS test; SET GLOBAL local_infile = 1;"
}

declare -A ready=(
  [mariadb]="MariaDB ready on 127.0.0.1:3306" [redis]="Redis ready on 127.0.0.1:6379"
  [rabbitmq]="RabbitMQ ready on 127.0.0.1:5672" [postgres]="PostgreSQL ready on 127.0.0.1:5432"
  [chromium]="Chromium and chromedriver installed"
)
declare -A start=(
  [mariadb]=start_mariadb_ready [redis]=start_redis [rabbitmq]=start_rabbitmq [postgres]=start_postgres
  [chromium]=install_chromium
)
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(mariadb redis rabbitmq postgres chromium)
for service in "${services[@]}"; do
  [ -n "${start[$service]:-}" ] || { log "unknown service $service (one of: ${!start[*]})"; exit 2; }
  "${start[$service]}" || exit 1
  log "${ready[$service]}"
done
