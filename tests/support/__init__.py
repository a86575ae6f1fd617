"""Helpers shared by the end-to-end tests (``tests/e2e``) and the benchmarks (``bench/``).

One module per job:

- ``processes``: free ports, listening checks, draining a child's output, the
  environment that makes this checkout importable;
- ``daemons``: the daemon under ``twistd`` and the ``dicomd`` command;
- ``dcmtk``: dcmtk's tools, as commands and as SCPs;
- ``pynetdicom_peers``: pynetdicom as an SCP and as a store SCU;
- ``datasets``: CT instances and Part 10 bytes;
- ``archive``: an archive folder as the store tests judge it;
- ``testdata``: the DICOM files pydicom and pydicom-data have on disk;
- ``dump_sample``: a file with every kind of ``dicomd dump`` line, and its listing.
- ``s3``: moto's S3 server for the object storage tests, and the dummy AWS
  environment and random files that the unit ones use too.

Unit tests (``tests/test_*.py``) start no process and open no socket: of
these they use only the data modules (``testdata``, ``dump_sample``).
"""
