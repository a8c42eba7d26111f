# CoAP: libcoap's example client and server (coap-client, coap-server) as
# devices for the tests and the benchmark. Debian ships them as
# coap-client-notls / coap-server-notls; make the plain names available too.
apt_install libcoap3-bin
for tool in coap-client coap-server; do
  if ! command -v "$tool" >/dev/null 2>&1 && command -v "$tool-notls" >/dev/null 2>&1; then
    ln -sf "$(command -v "$tool-notls")" "/usr/local/bin/$tool" 2>/dev/null \
      || log "cannot link $tool (not root?); tests use $tool-notls directly"
  fi
done
