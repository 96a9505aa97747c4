"""The reward server's default limits, plain numbers (no torch): `pslider-reward-server`'s option defaults."""

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
MAX_BODY_BYTES = 512 << 20  # 16 images at 1024x1024 in float32 are 200 MB; remote: clients split larger batches
READ_TIMEOUT = 30.0  # seconds without a byte from the client before its connection is dropped
MAX_CONCURRENT = 4
