#!/usr/bin/env bash
# Makes the passwords of the docker compose stack, once: one file per secret
# under deploy/secrets/ (kept out of git), mounted into the containers as
# /run/secrets/NAME by docker-compose.yml. Existing files are kept, so
# running it again changes nothing; delete a file (and the volumes that
# remember it) to make a new one. docker compose refuses to start while a
# file is missing: there is no default password.
#
#   deploy/make-secrets.sh && docker compose up --build -d
#
# The files are readable by everyone (0644) because compose bind-mounts them
# with their host permissions and the containers run as different users
# (canopy 10001, grafana 472, clickhouse 101, postgres 999); the directory is
# 0700, so on the host only its owner reaches them.
set -euo pipefail
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets
mkdir -p "$dir"
chmod 700 "$dir"
for name in postgres_password clickhouse_admin_password clickhouse_writer_password \
  clickhouse_reader_password grafana_admin_password; do
  file=$dir/$name
  [[ -s $file ]] && continue
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file.tmp"
  chmod 644 "$file.tmp"
  mv "$file.tmp" "$file"
  echo "made $file"
done
