# AMQP: RabbitMQ on 127.0.0.1:5672 (guest/guest), amqp-tools (amqp-publish,
# amqp-consume) and python3 pika as third-party AMQP devices, socat and
# openssl for the amqps:// test (a TLS terminator in front of RabbitMQ).
apt_install rabbitmq-server amqp-tools socat openssl
if ! python3 -c 'import pika' 2>/dev/null; then
  log "installing python3 pika"
  python3 -m pip install -q pika 2>/dev/null ||
    python3 -m pip install -q --break-system-packages pika
fi
if ! wait_port 127.0.0.1 5672 1; then
  log "starting RabbitMQ"
  rabbitmq-server -detached
  wait_port 127.0.0.1 5672 60 || { log "RabbitMQ did not come up on 5672"; return 1; }
fi
