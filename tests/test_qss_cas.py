"""QSS's compare-and-set put: a read-modify-write over a version another writer moved past is refused."""

from __future__ import annotations

import pytest

from hero.errors import Conflict
from hero.identity import NodeKeys
from hero.store.qss import QSS, open_qss


async def test_put_over_the_version_read_or_not_at_all(store: QSS) -> None:
    assert (await store.put("reg/x", b"1", epoch=0, expect=0)).version == 1
    with pytest.raises(Conflict):
        await store.put("reg/x", b"again as the first", epoch=0, expect=0)
    other = await open_qss(store.data_dir, NodeKeys.load_or_create(store.data_dir))  # another process's writer
    try:
        assert (await other.put("reg/x", b"2", epoch=0, expect=1)).version == 2
        with pytest.raises(Conflict):  # this writer's memory says version 1 is the head: it must look again
            await store.put("reg/x", b"stale", epoch=0, expect=1)
        assert (await store.put("reg/x", b"3", epoch=0, expect=2)).version == 3
        assert await other.get("reg/x") == b"3"
    finally:
        await other.aclose()
