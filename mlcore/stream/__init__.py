"""The streaming engine behind ``mlcore stream``: a small interface (``bus.EventBus``) over Redis
Streams. Another engine (NATS JetStream, Kafka) would implement the same few calls."""
