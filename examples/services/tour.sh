#!/bin/sh
# A tour of a service: where it is found, how it is balanced, what happens
# when one of its machines dies, and a rolling deploy. Run it after
# `hearth lab up examples/services/lab.toml`.
set -eu
HEARTH=${HEARTH:-hearth}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\).*/\1/p" | head -n 1; }

say "The service, its instances and their health"
$HEARTH service inspect web

say "Found by name: DNS on the host's listener (and on every network's gateway)"
dns=$($HEARTH status --json | field listen)
if command -v dig >/dev/null; then
  dig +short @"${dns%:*}" -p "${dns##*:}" web.service.hearth
  dig +short @"${dns%:*}" -p "${dns##*:}" SRV _web._tcp.service.hearth
else
  echo "(install bind9-dnsutils for dig; the passing instances are:)"
  $HEARTH service watch web --once
fi

say "Balanced by the ingress: web.localhost, six requests"
ingress=$($HEARTH status --json | field ingress)
for _ in 1 2 3 4 5 6; do curl -s -H 'Host: web.localhost' "http://$ingress/"; done

say "web-1's VM is killed: it leaves the passing set, and a new one takes its place"
pid=$($HEARTH machine inspect web-1 --json | field pid)
kill -9 "$pid"
timeout 120 $HEARTH service watch web | while read -r line; do
  echo "$line"
  case "$line" in *"(3 at"*) break ;; esac
done || true
$HEARTH service history web | tail -n 4

say "A rolling deploy: one new instance at a time, the old ones drained once it passes"
$HEARTH service deploy web -- sh -c 'mkdir -p /www && echo "v2 on $(hostname)" > /www/index.html && exec busybox httpd -f -p 8080 -h /www'
for _ in 1 2 3; do curl -s -H 'Host: web.localhost' "http://$ingress/"; done

say "Done. \`hearth lab down web\` removes it all."
