"""The server's shared graph (DGL), the DGL shim, LightGCN."""
