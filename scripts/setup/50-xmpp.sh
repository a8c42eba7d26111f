# XMPP: Prosody from Debian (run as a private instance, never the system
# service), openssl for its test CA, and slixmpp as the third-party device
# client of the tests and benchmark (Debian's python3-slixmpp: no pip).
apt_install prosody openssl python3 python3-slixmpp
if ! python3 -c 'import slixmpp' 2>/dev/null; then
  # Only where Debian's package is missing or broken: pip, installed first.
  apt_install python3-pip
  log "installing slixmpp with pip"
  python3 -m pip install -q slixmpp 2>/dev/null ||
    python3 -m pip install -q --break-system-packages slixmpp
fi
# Private instance under /tmp/polyhub-prosody; its port is in that folder's
# `port` file, which the XMPP tests read (they also call instance.sh themselves).
POLYHUB_XMPP_PORT=$(scripts/prosody/instance.sh /tmp/polyhub-prosody)
export POLYHUB_XMPP_PORT
log "prosody (private) on 127.0.0.1:$POLYHUB_XMPP_PORT"
# The accounts `polyhub compare` logs in with (METHOD.md), on that instance.
for user in polyhub-cmp-pub polyhub-cmp-sub polyhub-cmp-in polyhub-cmp-out; do
  [[ -e /tmp/polyhub-prosody/data/localhost/accounts/${user//-/%2d}.dat ]] && continue
  prosodyctl --config /tmp/polyhub-prosody/prosody.cfg.lua register "$user" localhost polyhub-cmp >/dev/null
done
# The access-control lab's users on XMPP (hub/tests/auth_lab_xmpp.rs) and the
# hub account it logs in with, password "polyhub-pw" like instance.sh's.
for user in user1 user2 user3 polyhub-lab; do
  [[ -e /tmp/polyhub-prosody/data/localhost/accounts/${user//-/%2d}.dat ]] && continue
  prosodyctl --config /tmp/polyhub-prosody/prosody.cfg.lua register "$user" localhost polyhub-pw >/dev/null
done
