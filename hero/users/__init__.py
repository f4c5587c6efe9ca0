"""The user registry: who may use this node (or this cluster), which tokens are revoked, which sign-ins were used.

It lives in the store (QSS), not in a node-local file: nodes that share the store share
the registry, and a node with a wiped disk finds every user again. Its objects:

- `users/<agent id>`: one user (`Record`: name, created, revoked, the owner's hosting grant, home node);
- `auth/revoked`: revoked token ids, each until the token would have expired anyway;
- `auth/nonces`: sign-in challenges already answered, until they expire.

A write reads the latest version, merges its change in and writes the next version, then
reads again: records only grow (a user is revoked, a token is revoked), so when two writers
cross, the one whose change is missing writes again. Nothing fences these objects (epoch 0).

A node keeps the registry in memory (`Registry`: read at start; checking a token costs no
I/O) and hears of changes made elsewhere: by another process on its data dir (`hero user …`
notes the user in `DATA/users.changed`, which the node stats on each check), by another node
(the cluster's broadcast calls `refresh`), or when a token names a user it has not seen (read
then). An existing `DATA/users.db` is moved in on first start and kept as `users.db.migrated`.
Tools (the CLI, tests, benchmarks) use `Users`: the same registry over its own store on a
private loop thread, every call durable before it returns. The node never holds a user's
private key.

Its modules: `record` (a user as stored; the objects' keys), `stored` (reading and merge-writing the objects),
`changes` (`DATA/users.changed`), `registry` (`Registry`, the node's) and `tool` (`Users`, the tools').
"""

from hero.users.record import USER_TTL, Record
from hero.users.registry import Registry
from hero.users.tool import Users

__all__ = ["USER_TTL", "Record", "Registry", "Users"]
