"""The test kit: helpers the tests share, never imported by regpatch itself."""
