"""Prevention: defences that make served answers worth less to a distilling student."""
