"""seqjax."""
