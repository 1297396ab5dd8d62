#!/bin/bash
# Runs deliveryd and nginx in one container; stops both when either exits.
set -eu
conf=/etc/ngx_mail_api
for f in nginx.conf deliveryd.conf keys keyring; do
  [ -f "$conf/$f" ] || { echo "docker-entrypoint: mount $conf with $f (examples in conf/)" >&2; exit 1; }
done
/usr/local/bin/deliveryd -c "$conf/deliveryd.conf" &
deliveryd=$!
nginx -c "$conf/nginx.conf" -g 'daemon off;' &
nginx=$!
trap 'kill -TERM $deliveryd; kill -QUIT $nginx' TERM INT
wait -n 2>/dev/null || wait $nginx
kill -TERM $deliveryd $nginx 2>/dev/null || true
wait
