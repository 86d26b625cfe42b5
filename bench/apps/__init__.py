"""The benchmark's server apps, one file per framework; ``bench/serve.py`` loads them by path.

Every app serves the same three WebSocket endpoints:

- ``/ws/echo``: echoes each text message (echo and idle workloads);
- ``/ws/fan``: a member of the broadcast group; it only reads, except that the text
  ``fill`` makes the server send it ``FILL_BYTES`` at once (the slow-consumer workload's
  clients ask for it and never read it, so that every later send to them must wait);
- ``/ws/control``: each text ``p <seq>`` broadcasts a 64-byte text message, whose first 8
  characters are ``seq``, to every member, with the framework's own idiom.

The group is named by ``$BENCH_GROUP`` (default ``fan``).
"""
