#!/bin/sh
# mkcert.sh DIR: make a self-signed certificate and key for 127.0.0.1 and
# localhost (DIR/cert.pem, DIR/key.pem), valid 10 years. For tests only.
set -eu
dir=${1:?usage: mkcert.sh DIR}
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
  -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1
chmod 600 "$dir/key.pem"
echo "$dir/cert.pem $dir/key.pem"
