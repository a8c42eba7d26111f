# Tools every test needs: curl, and the stock Mosquitto clients as devices.
apt_install curl ca-certificates mosquitto-clients
