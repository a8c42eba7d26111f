# MQTT: Mosquitto on 127.0.0.1:1883 (the external broker of the MQTT tests),
# the stock clients (mosquitto_pub / mosquitto_sub) as devices, and the
# `mosquitto` binary itself, which the restart test and the benchmark start
# as private instances on free ports.
apt_install mosquitto mosquitto-clients
if ! wait_port 127.0.0.1 1883 1; then
  log "starting Mosquitto on 127.0.0.1:1883"
  conf=/tmp/polyhub-test-mosquitto.conf
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' >"$conf"
  mosquitto -d -c "$conf"
  wait_port 127.0.0.1 1883 15 || { log "Mosquitto did not come up on 1883"; return 1; }
fi
# paho-mqtt (Python), the v3.1.1 and v5 client of the embedded-broker tests:
# Debian's package (1.6), pip only where it is missing.
apt_install python3
if ! python3 -c 'import paho.mqtt.client' 2>/dev/null; then
  apt_install python3-paho-mqtt || true
fi
if ! python3 -c 'import paho.mqtt.client' 2>/dev/null; then
  apt_install python3-pip
  log "installing paho-mqtt with pip"
  python3 -m pip install -q 'paho-mqtt>=1.6,<2' 2>/dev/null ||
    python3 -m pip install -q --break-system-packages 'paho-mqtt>=1.6,<2'
fi
