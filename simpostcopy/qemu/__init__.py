"""Real QEMU postcopy migrations: the test guest, a QMP client, the harness and the
importer that turns a run's numbers into simpostcopy's summary schema."""
