#!/bin/bash
# Startup script of a NATS VM (Debian 12 on Compute Engine). It installs nats-server
# and runs it under systemd with the files from infra/nats, handed over as instance
# metadata (see infra/README.md):
#   nats-conf      nats-server.conf
#   nats-accounts  accounts.conf
#   nats-env       regions/<region>.env
# The server name is the VM's name; the passwords come from Secret Manager
# (nats-app-password, nats-sys-password). Runs at every boot; idempotent.
set -euo pipefail

NATS_VERSION=2.15.2
MD=http://metadata.google.internal/computeMetadata/v1/instance

meta() { curl -fsS -H 'Metadata-Flavor: Google' "$MD/$1"; }

if ! /usr/local/bin/nats-server --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
  tmp=$(mktemp -d)
  base="https://github.com/nats-io/nats-server/releases/download/v$NATS_VERSION"
  tarball="nats-server-v$NATS_VERSION-linux-amd64.tar.gz"
  curl -fsSL -o "$tmp/$tarball" "$base/$tarball"
  curl -fsSL -o "$tmp/SHA256SUMS" "$base/SHA256SUMS"
  (cd "$tmp" && grep " $tarball\$" SHA256SUMS | sha256sum -c -)
  tar -xzf "$tmp/$tarball" -C "$tmp"
  install -m 0755 "$tmp/nats-server-v$NATS_VERSION-linux-amd64/nats-server" /usr/local/bin/nats-server
  rm -rf "$tmp"
fi

id -u nats >/dev/null 2>&1 || useradd --system --home-dir /var/lib/nats --shell /usr/sbin/nologin nats
install -d -m 0750 -o root -g nats /etc/nats
install -d -m 0750 -o nats -g nats /var/lib/nats /var/lib/nats/jetstream

meta attributes/nats-conf >/etc/nats/nats-server.conf
meta attributes/nats-accounts >/etc/nats/accounts.conf
{
  meta attributes/nats-env
  echo
  echo "NATS_SERVER_NAME=$(meta name)"
  echo "NATS_APP_PASSWORD=$(gcloud secrets versions access latest --secret=nats-app-password)"
  echo "NATS_SYS_PASSWORD=$(gcloud secrets versions access latest --secret=nats-sys-password)"
} >/etc/nats/nats.env
chown root:nats /etc/nats/*
chmod 0640 /etc/nats/*

# Before starting, let nats-server itself check the configuration.
set -a
# shellcheck disable=SC1091
. /etc/nats/nats.env
set +a
/usr/local/bin/nats-server -c /etc/nats/nats-server.conf -t

cat >/etc/systemd/system/nats.service <<'UNIT'
[Unit]
Description=NATS server (groupcast supercluster)
After=network-online.target
Wants=network-online.target

[Service]
User=nats
EnvironmentFile=/etc/nats/nats.env
ExecStart=/usr/local/bin/nats-server -c /etc/nats/nats-server.conf
ExecReload=/bin/kill -s HUP $MAINPID
# Stop in lame-duck mode: clients move to the region's other servers over
# lame_duck_duration, then the server exits.
KillSignal=SIGUSR2
TimeoutStopSec=60
Restart=always
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable nats.service
systemctl restart nats.service
