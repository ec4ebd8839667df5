"""Native (cffi + C) userfaultfd microbenchmark; built by the calibration work."""
