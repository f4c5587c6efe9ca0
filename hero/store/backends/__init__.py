"""Where fragments and manifests live: a directory (`directory.py`) or a fragment server (`remote.py`).

Every backend speaks the protocol in `protocol.py`; `wire.py` is the byte format of batched
fragment calls that `RemoteBackend` and the fragment server (`hero/store/fragserver.py`) share.
"""
