# AMQP: RabbitMQ on 127.0.0.1:5672 (guest/guest), amqp-tools (amqp-publish,
# amqp-consume) and python3 pika as third-party AMQP devices, socat and
# openssl for the amqps:// test (a TLS terminator in front of RabbitMQ).
# pika comes from Debian (python3-pika); pip only where the python3 on PATH
# is not Debian's (pyenv, say) and cannot see Debian's package.
apt_install rabbitmq-server amqp-tools socat openssl python3 python3-pika
if ! python3 -c 'import pika' 2>/dev/null; then
  apt_install python3-pip
  log "installing pika with pip (python3 is $(command -v python3))"
  python3 -m pip install -q pika 2>/dev/null ||
    python3 -m pip install -q --break-system-packages pika
fi
if ! wait_port 127.0.0.1 5672 1; then
  log "starting RabbitMQ"
  rabbitmq-server -detached
  wait_port 127.0.0.1 5672 60 || { log "RabbitMQ did not come up on 5672"; return 1; }
fi
