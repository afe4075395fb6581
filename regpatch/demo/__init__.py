"""The embedded default job, ``python -m regpatch.demo`` (``scripts/demo.sh``), and what it is made of.

- ``story``: the seed's patch day, end to end, on this machine;
- ``images``: real, pullable sample images and patch bundles (also used by the tests and benchmarks);
- ``loopback``: a real ``docker-registry`` process on 127.0.0.1 with a generated config.

Nothing of the patch itself lives here: the demo drives the installed command line.
"""
