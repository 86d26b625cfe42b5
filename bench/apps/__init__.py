"""The benchmark's server apps, one file per framework; ``bench/serve.py`` loads them by path.

Every app serves the same three WebSocket endpoints:

- ``/ws/echo``: echoes each text message (echo and idle workloads);
- ``/ws/fan``: a member of the broadcast group; it only reads, except that the text
  ``fill`` makes the server send it ``FILL_BYTES`` at once (the slow-consumer workload's
  clients ask for it and never read it, so that every later send to them must wait);
- ``/ws/flood``: a member of the flood group (binary messages); it only reads;
- ``/ws/control``: each text ``p <seq>`` broadcasts a 64-byte text message, whose first 8
  characters are ``seq``, to every ``/ws/fan`` member, with the framework's own idiom;
  each text ``f <first> <count> <size>`` publishes ``count`` binary messages of ``size``
  bytes to every ``/ws/flood`` member, as fast as the framework lets it (no waiting for
  the members), the first 8 bytes of each its sequence number (big-endian, from
  ``first``), then answers the text ``done``.

The groups are named by ``$BENCH_GROUP`` (default ``fan``; the flood group adds
``.flood``).
"""
