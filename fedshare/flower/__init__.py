"""FedShare on Flower's deployment engine (``flwr``, no Ray): the same rounds across processes
and machines.

- `strategy`: the server side of a round (configure -> aggregate), on the in-process server steps
- `node`: the client side, one SuperNode per shard of users
- `payload`: what crosses the wire, as Flower records
- `apps`: the ServerApp and the ClientApp
- `launch`: ``python -m fedshare.flower``: SuperLink + SuperNodes on 127.0.0.1, run, stop
"""
