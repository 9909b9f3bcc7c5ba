#!/usr/bin/env bash
# Start `mlflow server "$@"`, first writing the basic-auth app's config file from the environment
# when MLFLOW_AUTH_DATABASE_URI is set, so that the user-store password lives only in a Secret
# (the ini format has no way to read it from the environment itself).
set -euo pipefail

if [[ -n "${MLFLOW_AUTH_DATABASE_URI:-}" ]]; then
  conf="${MLFLOW_AUTH_CONFIG_PATH:-/tmp/mlflow-auth/basic_auth.ini}"
  mkdir -p "$(dirname "$conf")"
  umask 077
  # configparser treats % as interpolation: double it so URL-encoded passwords survive.
  cat > "$conf" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI//%/%%}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
  export MLFLOW_AUTH_CONFIG_PATH="$conf"
fi

exec mlflow server "$@"
