"""`trainguard ...`: the command line, its control-endpoint client, rendering, the
configuration file, and the local cluster behind `trainguard demo` and the tests."""
