#!/bin/bash
# Run once by the postgres image on an empty data directory (compose and Kubernetes): in the
# database $POSTGRES_DB (cim), one login role per domain service owning a schema of the same
# name, with the password from PG_PASSWORD_<SERVICE>. Only services that use Postgres (the domain
# services, each with its event store) get a role: the edges (gateway, websocket) have none.
# A new domain service: add its name to SERVICES and give its password to this container
# (tests/deploy/consistency.py checks the list against the code).
#
# Roles also get CREATE on the database: the services' migrator runs
# CREATE SCHEMA IF NOT EXISTS, which Postgres checks against the database privilege even when the
# schema already exists. They get no rights on other services' schemas.
set -euo pipefail

SERVICES="graph document workflow agent webhook"

psql_cim() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" "$@"
}

psql_cim -v db="$POSTGRES_DB" <<'SQL'
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL

for service in $SERVICES; do
    var="PG_PASSWORD_${service^^}"
    if [ -z "${!var:-}" ]; then
        echo "10-cim-roles.sh: $var is not set (password of the $service role)" >&2
        exit 1
    fi
    psql_cim -v db="$POSTGRES_DB" -v role="$service" -v password="${!var}" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
GRANT CONNECT, CREATE ON DATABASE :"db" TO :"role";
CREATE SCHEMA :"role" AUTHORIZATION :"role";
SQL
    echo "10-cim-roles.sh: role and schema $service created"
done

# The backup role (`cim backup`: the k8s CronJob cim-backup, compose's profile backup), password
# PG_PASSWORD_BACKUP. A member of every domain service's role: a backup reads each schema, locks
# its `events` table in SHARE mode for the consistent cut (Postgres lets only an owner-like
# privilege take that lock, and the tables appear later, created by the services' migrations, so
# no grant made here could name them) and records the backup in the schema's `backups` table.
# It owns nothing itself and is used by nothing else.
if [ -z "${PG_PASSWORD_BACKUP:-}" ]; then
    echo "10-cim-roles.sh: PG_PASSWORD_BACKUP is not set (password of the backup role)" >&2
    exit 1
fi
psql_cim -v db="$POSTGRES_DB" -v password="$PG_PASSWORD_BACKUP" <<'SQL'
CREATE ROLE backup LOGIN PASSWORD :'password';
GRANT CONNECT ON DATABASE :"db" TO backup;
SQL
for service in $SERVICES; do
    psql_cim -v role="$service" <<'SQL'
GRANT :"role" TO backup;
SQL
done
echo "10-cim-roles.sh: role backup created, a member of: $SERVICES"
# The monitoring role (postgres-exporter; compose and k8s), password PG_PASSWORD_MONITORING:
# pg_monitor reads the statistics views and settings of every database, and the exporter's custom
# queries (monitoring/exporters/postgres-queries.yaml) need nothing more. It reads no table.
if [ -z "${PG_PASSWORD_MONITORING:-}" ]; then
    echo "10-cim-roles.sh: PG_PASSWORD_MONITORING is not set (password of the monitoring role)" >&2
    exit 1
fi
psql_cim -v db="$POSTGRES_DB" -v password="$PG_PASSWORD_MONITORING" <<'SQL'
CREATE ROLE monitoring LOGIN PASSWORD :'password' CONNECTION LIMIT 3;
GRANT pg_monitor TO monitoring;
GRANT CONNECT ON DATABASE :"db" TO monitoring;
SQL
echo "10-cim-roles.sh: role monitoring created (pg_monitor)"
