#!/bin/sh
# One database per service (DESIGN.md: each service has its own), owned by the `trias` role
# the services connect as. The postgres image runs this once, when its volume is new.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" \
    -v password="$TRIAS_DB_PASSWORD" <<'SQL'
CREATE ROLE trias LOGIN PASSWORD :'password';
CREATE DATABASE trias_issuer OWNER trias;
CREATE DATABASE trias_validator OWNER trias;
CREATE DATABASE trias_auditor OWNER trias;
SQL
