"""Signed deployment: bundles hashed and signed, refused when tampered, unsigned or signed by a key the node does
not trust (naming the skill and why); the shipped skills signed by Hero's key; agents' specs signed k-of-n,
recorded append-only in QSS; the developer's commands (`hero skill new/test/sign/trust/list`, `hero agent spec`)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nacl.signing
import pytest

from hero.errors import SkillRefused, SpecRefused
from hero.identity import NodeKeys, UserKey
from hero.skills.bundle import SIGNATURE, sign, verify
from hero.skills.registry import SkillRegistry, bundles_in, shipped_dir
from hero.skills.spec import SkillRef, SpecLog, SpecPolicy, new_spec
from hero.skills.trust import HERO_KEY
from tests.conftest import add_user, hero_cli
from tests.skillkit import write_skill

CODE = '@command("hi")\nasync def hi(ctx: SkillContext, text: str) -> str:\n    return "hi"\n'


def test_every_shipped_skill_is_signed_by_heros_key_and_unchanged() -> None:
    """Fails after a shipped skill is edited: re-sign with scripts/sign-shipped-skills.py and Hero's release key."""
    folders = bundles_in(shipped_dir())  # type: ignore[arg-type]
    assert {f.name for f in folders} == {"reminders", "notes", "ask", "energy", "calc"}
    for folder in folders:
        _, sig = verify(folder, {HERO_KEY})
        assert sig.key == HERO_KEY


def test_tampered_unsigned_and_untrusted_bundles_are_refused_naming_skill_and_reason(tmp_path: Path) -> None:
    dev = nacl.signing.SigningKey.generate()
    trusted = {dev.verify_key.encode().hex()}
    folder = write_skill(tmp_path, "greeter", CODE)
    with pytest.raises(SkillRefused, match=r"skill greeter: unsigned"):
        verify(folder, trusted)
    sign(folder, dev)
    assert verify(folder, trusted)[0].name == "greeter"
    with pytest.raises(SkillRefused, match=r"skill greeter: signed by key [0-9a-f]{64}, which this node does not"):
        verify(folder, {HERO_KEY})
    original = (folder / "greeter.py").read_text()
    (folder / "greeter.py").write_text(original.replace('"hi"', '"pwned"'))
    with pytest.raises(SkillRefused, match=r"skill greeter: tampered: the bundle changed since it was signed"):
        verify(folder, trusted)
    (folder / "greeter.py").write_text(original)
    (folder / "extra.py").write_text("import os\n")
    with pytest.raises(SkillRefused, match="tampered"):
        verify(folder, trusted)
    (folder / "extra.py").unlink()
    sig = json.loads((folder / SIGNATURE).read_text())
    other = nacl.signing.SigningKey.generate()
    (folder / SIGNATURE).write_text(json.dumps({**sig, "key": other.verify_key.encode().hex()}))
    with pytest.raises(SkillRefused, match="bad signature"):
        verify(folder, trusted | {other.verify_key.encode().hex()})


def test_a_node_loads_trusted_bundles_and_lists_the_refused_ones_without_running_them(tmp_path: Path) -> None:
    dev = nacl.signing.SigningKey.generate()
    good = sign(write_skill(tmp_path / "skills", "good", CODE), dev)
    bad = write_skill(tmp_path / "skills", "bad", "raise SystemExit('ran unverified code')\n" + CODE)
    assert good.name == "good" and bad.exists()
    shutil.copytree(shipped_dir() / "calc", tmp_path / "skills" / "calc")  # type: ignore[operator]
    registry = SkillRegistry(trusted=lambda: {HERO_KEY, dev.verify_key.encode().hex()}, shipped=shipped_dir(),
                             folders=[tmp_path / "skills"], entry_points=False)
    registry.load()
    names = set(registry.skills())
    assert {"good", "calc", "notes"} <= names and "bad" not in names
    reasons = registry.describe()["refused"]
    assert any("skill bad: unsigned" in r["reason"] for r in reasons)
    assert any("skill calc: the name is taken by the shipped skill" in r["reason"] for r in reasons)


def test_a_skill_installed_as_a_package_loads_through_its_entry_point(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What `pip install` leaves in site-packages (the package folder, its dist-info with `entry_points.txt` in
    the `hero.skills` group), found on the path: the signed package loads, the unsigned one and the entry point
    whose package is missing are refused and listed, and none of them stops the others."""
    dev = nacl.signing.SigningKey.generate()
    site = tmp_path / "site-packages"
    sign(write_skill(site, "hero_greeter", CODE), dev)
    write_skill(site, "hero_unsigned", CODE)
    for dist, target in (("hero_greeter", "greeter = hero_greeter"), ("hero_unsigned", "unsigned = hero_unsigned"),
                         ("hero_gone", "gone = hero_gone_missing")):
        info = site / f"{dist}-1.0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0.0\n")
        (info / "entry_points.txt").write_text(f"[hero.skills]\n{target}\n")
    monkeypatch.syspath_prepend(str(site))
    registry = SkillRegistry(trusted=lambda: {dev.verify_key.encode().hex()}, entry_points=True)
    registry.load()
    skill = registry.get("hero_greeter")
    assert skill is not None and skill.source == "entry point" and skill.key == dev.verify_key.encode().hex()
    assert registry.get("hero_unsigned") is None
    reasons = " | ".join(r["reason"] for r in registry.describe()["refused"])
    assert "skill hero_unsigned: unsigned" in reasons
    assert "skill package gone: 'hero_gone_missing' is not an installed package" in reasons


async def test_an_agent_spec_needs_k_of_n_signatures_and_its_history_is_append_only(store) -> None:  # type: ignore[no-untyped-def]
    node = NodeKeys.load_or_create(store.data_dir)
    owner, third, stranger = UserKey.generate(), nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    policy = SpecPolicy(node.node_id, frozenset({third.verify_key.encode().hex()}), threshold=2)
    log = SpecLog(store, policy)
    refs = [SkillRef("calc", "1.0.0", "ab" * 32)]
    first = new_spec(owner.agent_id, refs)
    with pytest.raises(SpecRefused, match="1 valid signature"):
        await log.accept(first.signed(node.signing))
    with pytest.raises(SpecRefused, match="1 valid signature"):
        await log.accept(first.signed(node.signing).signed(stranger))  # not an allowed signer
    accepted = await log.accept(first.signed(node.signing).signed(owner.signing))
    second = new_spec(owner.agent_id, [], previous=accepted).signed(owner.signing).signed(third)
    await log.accept(second)
    forged = new_spec(owner.agent_id, refs, previous=accepted).signed(owner.signing).signed(third)
    with pytest.raises(SpecRefused, match="does not follow"):
        await log.accept(forged)  # a fork of spec 1: the history only grows
    changed = second.__class__(**{**second.__dict__, "skills": tuple(refs)})  # same signatures, other skills
    with pytest.raises(SpecRefused, match="0 valid signature"):
        policy.check(changed)
    history = await log.history(owner.agent_id)
    assert [s.seq for s in history] == [1, 2] and history[1].previous == history[0].digest()
    assert (await log.current(owner.agent_id)) == second


def test_skill_new_then_test_pass_on_a_fresh_scaffold_in_under_10_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    hero_cli("skill", "new", "hello", "--dir", str(tmp_path))
    result = hero_cli("skill", "test", str(tmp_path / "hello"))
    elapsed = time.monotonic() - started
    assert "2 passed" in result.stdout, result.stdout + result.stderr
    assert elapsed < 10, elapsed
    bad = hero_cli("skill", "new", "Hello!", "--dir", str(tmp_path), check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("hero: skill name 'Hello!'")


@pytest.mark.model
def test_skill_test_with_model_runs_the_real_default_model(tmp_path: Path) -> None:
    hero_cli("skill", "new", "hello", "--dir", str(tmp_path))
    (tmp_path / "hello" / "tests" / "test_model.py").write_text(
        "from hero.skills.testing import local_agent\n\n\n"
        "async def test_the_model_answers():\n"
        "    async with local_agent() as agent:\n"
        "        assert type(agent.llm).__name__ == 'LLMService'\n"
        "        assert await agent.chat('hello there')\n")
    scripted = hero_cli("skill", "test", str(tmp_path / "hello"), check=False)
    assert scripted.returncode != 0 and "1 failed, 2 passed" in scripted.stdout, scripted.stdout
    real = hero_cli("skill", "test", str(tmp_path / "hello"), "--model")
    assert "3 passed" in real.stdout, real.stdout + real.stderr


def test_sign_trust_install_and_list_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key_file = tmp_path / "dev.key"
    public = hero_cli("skill", "keygen", "--out", str(key_file)).stdout.strip()
    folder = write_skill(tmp_path / "src", "greeter", CODE)
    refused = hero_cli("skill", "install", str(folder), "--data", str(data), check=False)
    assert refused.returncode == 2 and "skill greeter: unsigned" in refused.stderr
    hero_cli("skill", "sign", str(folder), "--key", str(key_file))
    untrusted = hero_cli("skill", "install", str(folder), "--data", str(data), check=False)
    assert untrusted.returncode == 2 and "which this node does not trust" in untrusted.stderr
    hero_cli("skill", "trust", public, "--name", "me", "--data", str(data))
    hero_cli("skill", "install", str(folder), "--data", str(data))
    listed = json.loads(hero_cli("skill", "list", "--data", str(data), "--json").stdout)
    by_name = {s["name"]: s for s in listed["skills"]}
    assert by_name["greeter"]["key"] == public and by_name["greeter"]["source"] == "folder"
    assert by_name["calc"]["key"] == HERO_KEY and listed["refused"] == []
    (data / "skills" / "greeter" / "greeter.py").write_text("print('changed')\n" + CODE)
    listed = json.loads(hero_cli("skill", "list", "--data", str(data), "--json").stdout)
    assert "greeter" not in {s["name"] for s in listed["skills"]}
    assert any("skill greeter: tampered" in r["reason"] for r in listed["refused"])
    bad_key = hero_cli("skill", "trust", "nothex", "--data", str(data), check=False)
    assert bad_key.returncode == 2 and "not a public key" in bad_key.stderr


def test_agent_spec_propose_sign_apply_and_history(tmp_path: Path) -> None:
    data = tmp_path / "data"
    alice = add_user(data, "alice")
    assert "no spec yet" in hero_cli("agent", "spec", "alice", "--data", str(data)).stdout
    proposal = tmp_path / "spec.json"
    hero_cli("agent", "spec", "alice", "--propose", str(proposal), "--skills", "calc,notes", "--data", str(data))
    unsigned = hero_cli("agent", "spec", "alice", "--apply", str(proposal), "--data", str(data), check=False)
    assert unsigned.returncode == 2 and "0 valid signature(s)" in unsigned.stderr
    hero_cli("agent", "spec", "alice", "--sign", str(proposal), "--key", "node", "--data", str(data))
    hero_cli("agent", "spec", "alice", "--apply", str(proposal), "--data", str(data))
    history = json.loads(hero_cli("agent", "spec", "alice", "--history", "--json", "--data", str(data)).stdout)
    assert [(s["seq"], [k["name"] for k in s["skills"]]) for s in history] == [(1, ["calc", "notes"])]
    assert history[0]["agent_id"] == alice["agent_id"]
    text = hero_cli("agent", "spec", "alice", "--history", "--data", str(data)).stdout
    assert text.startswith("spec 1 ") and "signed by node" in text


MARKER = """
from pathlib import Path

@on_message
async def mark(ctx: SkillContext, text: str) -> str:
    Path(text.removeprefix("mark ")).joinpath(ctx.agent_id).write_text("ran")  # evidence: its code ran
    return "marked"
"""


async def test_a_tampered_spec_refuses_activation_with_a_503_naming_why_while_others_serve(tmp_path: Path) -> None:
    import httpx

    from hero.server import open_store
    from hero.skills.spec import spec_key
    from tests.conftest import auth, make_config, serving

    marks = tmp_path / "marks"
    marks.mkdir()
    folder = write_skill(tmp_path / "dev", "marker", MARKER)
    config = make_config(tmp_path, dev_skills=str(folder))
    alice, bob = add_user(config.data_dir, "alice"), add_user(config.data_dir, "bob")
    keys = NodeKeys.load_or_create(config.data_dir)
    store = await open_store(config, keys)
    try:  # alice's spec names calc only, signed by the node; then someone adds a skill to it in the store
        log = SpecLog(store, SpecPolicy(keys.node_id))
        calc = SkillRef("calc", "1.0.0", "ab" * 32)
        spec = await log.accept(new_spec(alice["agent_id"], [calc]).signed(keys.signing))
        tampered = spec.__class__(**{**spec.__dict__, "skills": (calc, SkillRef("marker", "1.0.0", "cd" * 32))})
        await store.put(spec_key(alice["agent_id"], 1), json.dumps(tampered.to_json()).encode(), epoch=0)
    finally:
        await store.aclose()
    async with serving(config) as parts, httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}",
                                                           timeout=30) as http:
        def say(user: dict[str, str]):  # type: ignore[no-untyped-def]
            return http.post("/v1/chat/completions", headers=auth(user["token"]),
                             json={"messages": [{"role": "user", "content": f"mark {marks}"}]})

        refused = await say(alice)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["type"] == "agent_refused"
        assert "its spec was refused" in error["message"] and "0 valid signature(s)" in error["message"]
        served = await say(bob)  # bob's agent serves meanwhile, with every skill of the node
        assert served.status_code == 200 and served.json()["choices"][0]["message"]["content"] == "marked"
        assert (marks / bob["agent_id"]).exists() and not (marks / alice["agent_id"]).exists()
        assert not parts.node.is_active(alice["agent_id"]) and parts.node.is_active(bob["agent_id"])
