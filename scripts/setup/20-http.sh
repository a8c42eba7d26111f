# HTTP adapter: curl is the device in the tests, openssl makes the test CA
# and server certificate for HTTPS, wrk drives bench/http/run.sh.
apt_install curl openssl wrk
