"""Errors of the QEMU harness: one line that says what failed and what to do."""


class QemuError(RuntimeError):
    """QEMU, its QMP monitor, the test guest or the migration failed."""
