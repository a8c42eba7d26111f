#!/usr/bin/env bash
# Makes the test certificates and keys examples/secure.toml uses, with
# openssl: a private CA (ca.pem, ca.key) and a server certificate for
# localhost and 127.0.0.1 signed by it (server.pem, server.key), in DIR
# (default: examples/secure/certs). Clients trust ca.pem:
#   mosquitto_sub --cafile examples/secure/certs/ca.pem -p 8883 ...
#   curl --cacert examples/secure/certs/ca.pem https://127.0.0.1:8443/...
# Idempotent: files that exist are kept. For tests and labs only; a real
# deployment uses certificates from its own CA.
set -euo pipefail
dir=${1:-$(dirname "$0")/certs}
mkdir -p "$dir"
cd "$dir"
command -v openssl >/dev/null || { echo "make-certs.sh: openssl not found (Debian: apt-get install openssl)" >&2; exit 1; }

if [[ ! -s ca.pem || ! -s ca.key ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -keyout ca.key -out ca.pem \
    -subj "/CN=polyhub example CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
if [[ ! -s server.pem || ! -s server.key ]]; then
  cat > server-ext.cnf <<'CNF'
subjectAltName=DNS:localhost,IP:127.0.0.1
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
CNF
  openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days 825 -extfile server-ext.cnf 2>/dev/null
  rm -f server.csr server-ext.cnf
fi
# The hub may run as another user than the one that made them.
chmod 0644 ca.pem server.pem server.key
echo "certificates in $(pwd): ca.pem (trust this), server.pem, server.key"
