# Tools every test needs: curl, and the stock Mosquitto clients as devices.
# pkg-config and libssl-dev: the openssl crate (CoAP over DTLS) links the system OpenSSL.
apt_install pkg-config libssl-dev
apt_install curl ca-certificates mosquitto-clients
