"""Identity: key-tied overlay addresses (Mycelium's scheme), node keys, tokens."""

from __future__ import annotations

import os
import stat

import pytest
from nacl.public import PrivateKey

from hero.config import NodeConfig, load_config
from hero.errors import BadRequest, Unauthorized, UsageError
from hero.identity import NodeKeys, UserKey, check_agent_id, overlay_address, verify_signature

VECTORS = [
    (bytes(32), "2fe57da347cd62431528daac5fbb290730fff684afc4cfc2ed90995f58cb3b74",
     "570:75b1:b695:5ed7:541e:e8d8:efbb:b9a0"),
    (bytes(range(32)), "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f",
     "430:9364:d8d8:84a9:dd60:de78:c767:d361"),
    (b"\xff" * 32, "847c0d2c375234f365e660955187a3735a0f7613d1609d3a6a4d8c53aeaa5a22",
     "569:215c:b0bf:ab7b:fe1b:f51d:b0c2:635a"),
]


@pytest.mark.parametrize(("secret", "public", "address"), VECTORS)
def test_overlay_address_matches_mycelium_vectors(secret, public, address):
    pk = bytes(PrivateKey(secret).public_key)
    assert pk.hex() == public
    assert str(overlay_address(pk)) == address


def test_addresses_fall_in_400_slash_7():
    for _ in range(200):
        address = overlay_address(bytes(PrivateKey.generate().public_key))
        assert address.packed[0] in (0x04, 0x05)


def test_node_keys_persist_with_private_permissions(tmp_path):
    first = NodeKeys.load_or_create(tmp_path)
    second = NodeKeys.load_or_create(tmp_path)
    assert first.node_id == second.node_id and first.master == second.master
    assert first.address == second.address
    for name in ("node.ed25519", "node.x25519", "master.key"):
        assert stat.S_IMODE(os.stat(tmp_path / "keys" / name).st_mode) == 0o600
    assert first.derive_key("agent/a") != first.derive_key("agent/b")
    assert len(first.derive_key("agent/a")) == 32
    (tmp_path / "keys" / "master.key").write_bytes(b"short")
    with pytest.raises(BadRequest):
        NodeKeys.load_or_create(tmp_path)


def test_tokens_verify_expire_and_are_node_bound(tmp_path):
    keys = NodeKeys.load_or_create(tmp_path / "a")
    token, claims = keys.issue_token(sub="ab" * 32, name="alice", role="user", ttl=60)
    assert keys.verify_token(token) == claims
    with pytest.raises(Unauthorized, match="expired"):
        keys.verify_token(token, now=claims.exp + 1)
    with pytest.raises(Unauthorized):
        NodeKeys.load_or_create(tmp_path / "b").verify_token(token)
    with pytest.raises(Unauthorized):
        keys.verify_token(token.replace("hero1.", "hero2."))


def test_user_keys_sign_and_agent_ids_are_checked():
    user = UserKey.generate()
    signature = user.signing.sign(b"challenge").signature
    assert verify_signature(user.agent_id, b"challenge", signature)
    assert not verify_signature(user.agent_id, b"other", signature)
    assert not verify_signature("zz", b"challenge", signature)
    assert check_agent_id(user.agent_id) == user.agent_id
    for bad in ("", "AB" * 32, "ab" * 31, "../" + "a" * 61):
        with pytest.raises(BadRequest):
            check_agent_id(bad)


def test_config_layers_defaults_toml_env_flags(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    assert load_config(data) == NodeConfig(data_dir=data)
    (data / "hero.toml").write_text("[node]\nidle_after_s = 42\nport = 9001\n")
    assert load_config(data).idle_after_s == 42.0
    monkeypatch.setenv("HERO_PORT", "9002")
    assert load_config(data).port == 9002
    assert load_config(data, port=9003).port == 9003
    monkeypatch.setenv("HERO_IDLE_AFTER_S", "7")
    assert load_config(data).idle_after_s == 7.0
    assert load_config(data, idle_after_s=8).idle_after_s == 8.0
    (data / "hero.toml").write_text("[node]\nidel_after_s = 1\n")
    with pytest.raises(UsageError, match="unknown setting 'idel_after_s'"):
        load_config(data)
    (data / "hero.toml").write_text("[node]\nidle_after_s = 'soon'\n")
    with pytest.raises(UsageError, match="idle_after_s must be float"):
        load_config(data)


def test_a_renamed_setting_still_works_and_says_it_is_deprecated(tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "hero.toml").write_text("[node]\nidle_after = 42\n")  # a config from before the unit was named
    assert load_config(data).idle_after_s == 42.0
    assert "hero.toml: idle_after is deprecated, use idle_after_s" in caplog.text
    (data / "hero.toml").write_text("[node]\nidle_after = 42\nidle_after_s = 50\n")
    assert load_config(data).idle_after_s == 50.0  # the new name wins
    (data / "hero.toml").unlink()
    monkeypatch.setenv("HERO_IDLE_AFTER", "9")
    assert load_config(data).idle_after_s == 9.0
    assert "HERO_IDLE_AFTER is deprecated, use HERO_IDLE_AFTER_S" in caplog.text
    (data / "hero.toml").write_text("[node]\nidle_after = -1\n")
    with pytest.raises(UsageError, match="idle_after_s must be > 0"):
        load_config(data)
