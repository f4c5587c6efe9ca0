"""`hero skill …` (new, test, sign, keygen, trust, list, install) and `hero agent spec …`: the skill developer's
and the operator's commands. Misuse is one line and exit code 2, as everywhere in `hero`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nacl.signing

from hero.errors import HeroError, UsageError
from hero.skills.bundle import load_key, sign, verify
from hero.skills.manifest import load_manifest
from hero.skills.registry import SkillRegistry, shipped_dir
from hero.skills.scaffold import scaffold
from hero.skills.spec import AgentSpec, SkillRef, SpecLog, SpecPolicy, new_spec, spec_from_json
from hero.skills.testing import MODEL_ENV, SKILL_ENV
from hero.skills.trust import TrustStore, check_key

PYTEST_INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


def add_skill_parser(sub: Any) -> None:
    from hero.clibase import Parser, data_arg

    skill = sub.add_parser("skill", help="write, test, sign, trust and list skills").add_subparsers(
        parser_class=Parser, metavar="ACTION", required=True)
    new = skill.add_parser("new", help="scaffold a skill bundle with a test")
    new.add_argument("name")
    new.add_argument("--dir", type=Path, default=Path("."), help="where to create it (default: here)")
    new.set_defaults(func=cmd_new)
    test = skill.add_parser("test", help="run a skill's tests against an ephemeral local agent")
    test.add_argument("path", type=Path)
    test.add_argument("--model", action="store_true", help="use the real default model (default: a scripted one)")
    test.add_argument("-k", dest="select", help="only tests matching this pytest expression")
    test.set_defaults(func=cmd_test)
    sign_p = skill.add_parser("sign", help="hash a bundle and sign it with a developer key (writes skill.sig)")
    sign_p.add_argument("path", type=Path)
    sign_p.add_argument("--key", type=Path, required=True, help="the developer's secret key file (hero skill keygen)")
    sign_p.set_defaults(func=cmd_sign)
    keygen = skill.add_parser("keygen", help="make a developer key pair; prints the public key to trust")
    keygen.add_argument("--out", type=Path, required=True)
    keygen.set_defaults(func=cmd_keygen)
    trust = skill.add_parser("trust", help="trust (or --remove) a developer key on this node")
    trust.add_argument("key")
    trust.add_argument("--name", default="", help="whose key it is")
    trust.add_argument("--remove", action="store_true")
    data_arg(trust, json_flag=True)
    trust.set_defaults(func=cmd_trust)
    lst = skill.add_parser("list", help="the skills this node loads, and those it refuses (with why)")
    lst.add_argument("--dev-skills", type=Path, nargs="*", default=[], help="dev folders, as hero up takes them")
    data_arg(lst, json_flag=True)
    lst.set_defaults(func=cmd_list)
    install = skill.add_parser("install", help="verify a signed bundle and copy it into DATA/skills/")
    install.add_argument("path", type=Path)
    data_arg(install, json_flag=True)
    install.set_defaults(func=cmd_install)

    agent = sub.add_parser("agent", help="one agent: its spec").add_subparsers(
        parser_class=Parser, metavar="ACTION", required=True)
    spec = agent.add_parser("spec", help="an agent's signed spec: show, --history, --propose, --sign, --apply")
    spec.add_argument("name", help="the user whose agent it is")
    spec.add_argument("--history", action="store_true", help="every accepted spec, oldest first")
    spec.add_argument("--propose", type=Path, metavar="FILE",
                      help="write the next spec (unsigned) to FILE, with --skills or the node's skills")
    spec.add_argument("--skills", help="comma-separated skill names for --propose")
    spec.add_argument("--sign", type=Path, metavar="FILE", help="add a signature to the spec in FILE (needs --key)")
    spec.add_argument("--key", help="a secret key file, or 'node' for this node's key")
    spec.add_argument("--apply", type=Path, metavar="FILE", help="verify the spec in FILE and record it")
    data_arg(spec, json_flag=True)
    spec.set_defaults(func=cmd_spec)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data) if getattr(args, "json", False) else text)


def cmd_new(args: argparse.Namespace) -> int:
    folder = scaffold(args.name, args.dir)
    print(f"created {folder}: skill.toml, {args.name}.py, tests/test_{args.name}.py\n"
          f"next: hero skill test {folder}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    folder = args.path.resolve()
    load_manifest(folder)  # a bad manifest is a one-line error before pytest starts
    tests = folder / "tests"
    if not tests.is_dir():
        raise UsageError(f"{folder} has no tests/ folder")
    with tempfile.TemporaryDirectory(prefix="hero-skill-test-") as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text(PYTEST_INI)
        # Only pytest-asyncio: every other installed plugin's modules would be loaded and assertion-rewritten
        # on each run (no bytecode is written), ~10 s on a busy 2-core node; a skill's tests need none of them.
        command = [sys.executable, "-m", "pytest", "-q", "-c", str(ini), "--rootdir", str(folder),
                   "-p", "no:cacheprovider", "-p", "pytest_asyncio.plugin", str(tests)]
        if args.select:
            command += ["-k", args.select]
        env = {**os.environ, SKILL_ENV: str(folder), MODEL_ENV: "1" if args.model else "0",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        return subprocess.run(command, env=env, check=False).returncode


def cmd_sign(args: argparse.Namespace) -> int:
    sig = sign(args.path, load_key(args.key))
    print(f"signed {sig.name} {sig.version}: hash {sig.hash}, key {sig.key}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise UsageError(f"{args.out} exists; keys are never overwritten")
    key = nacl.signing.SigningKey.generate()
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.encode().hex() + "\n")
    print(key.verify_key.encode().hex())
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    store = TrustStore(args.data)
    if args.remove:
        found = store.remove(args.key)
        _emit(args, {"key": check_key(args.key), "removed": found},
              f"no longer trusted: {args.key}" if found else f"{args.key} was not trusted")
    else:
        store.add(args.key, args.name)
        _emit(args, {"key": check_key(args.key), "trusted": True}, f"trusted: {check_key(args.key)}")
    return 0


def registry_for(data: Path, dev: list[Path] | None = None) -> SkillRegistry:
    trust = TrustStore(data)
    registry = SkillRegistry(trusted=trust.keys, shipped=shipped_dir(), folders=[data / "skills"], dev=dev or [])
    registry.load()
    return registry


def cmd_list(args: argparse.Namespace) -> int:
    described = registry_for(args.data, args.dev_skills).describe()
    lines = [f"{s['name']:12} {s['version']:8} {s['source']:11} {s['hash'][:12]}  {s['description']}"
             for s in described["skills"]]
    lines += [f"refused: {r['reason']}" for r in described["refused"]]
    _emit(args, described, "\n".join(lines) or "no skills")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    manifest, sig = verify(args.path, TrustStore(args.data).keys())
    target = args.data / "skills" / manifest.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(args.path, target, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.pyc"))
    _emit(args, {"name": manifest.name, "version": manifest.version, "hash": sig.hash, "path": str(target)},
          f"installed {manifest.name} {manifest.version} in {target}; restart the node to load it")
    return 0


def cmd_spec(args: argparse.Namespace) -> int:
    return asyncio.run(_spec(args))


async def _spec(args: argparse.Namespace) -> int:
    from hero.clibase import open_users
    from hero.config import load_config
    from hero.identity import NodeKeys
    from hero.nodelock import NodeLock
    from hero.server import open_store

    config = load_config(args.data)
    users = open_users(args.data)
    try:
        agent_id = users.get(args.name).agent_id
    finally:
        users.close()
    keys = NodeKeys.load_or_create(args.data)
    if args.sign is not None:
        return _sign_file(args, keys)
    policy = SpecPolicy(keys.node_id, frozenset(config.spec_signers.split()), config.spec_threshold)
    writing = args.apply is not None
    lock = NodeLock.acquire(args.data, port=0) if writing else None  # one writer: not while the node runs
    store = await open_store(config, keys)
    try:
        log = SpecLog(store, policy)
        history = await log.history(agent_id)
        if args.history:
            _emit(args, [s.to_json() for s in history], "\n".join(_line(s, policy) for s in history) or "no spec yet")
        elif args.propose is not None:
            proposed = _propose(args, agent_id, history[-1] if history else None)
            args.propose.write_text(json.dumps(proposed.to_json(), indent=1) + "\n")
            _emit(args, proposed.to_json(), f"wrote spec {proposed.seq} to {args.propose}; sign it (--sign), then "
                                            "--apply it")
        elif writing:
            spec = spec_from_json(json.loads(args.apply.read_text()))
            if spec.agent_id != agent_id:
                raise UsageError(f"{args.apply} is a spec for agent {spec.agent_id[:16]}…, not {args.name}'s")
            accepted = await log.accept(spec)
            _emit(args, accepted.to_json(), f"accepted spec {accepted.seq} for {args.name}: {_line(accepted, policy)}")
        else:
            current = await log.current(agent_id)
            _emit(args, current.to_json() if current else None,
                  _line(current, policy) if current else f"{args.name}'s agent has no spec yet (the node makes one "
                                                         "at its first event)")
    except HeroError:
        raise
    except (OSError, ValueError) as exc:
        raise UsageError(f"spec: {exc}") from None
    finally:
        await store.aclose()
        if lock is not None:
            lock.release()
    return 0


def _propose(args: argparse.Namespace, agent_id: str, previous: AgentSpec | None) -> AgentSpec:
    skills = registry_for(args.data).skills()
    names = [n.strip() for n in args.skills.split(",") if n.strip()] if args.skills else sorted(skills)
    refs = []
    for name in names:
        if name not in skills:
            raise UsageError(f"no skill {name!r} on this node (hero skill list)")
        refs.append(SkillRef(name, skills[name].version, skills[name].hash))
    return new_spec(agent_id, refs, previous=previous)


def _sign_file(args: argparse.Namespace, keys: Any) -> int:
    if not args.key:
        raise UsageError("--sign needs --key (a secret key file, or 'node')")
    key = keys.signing if args.key == "node" else load_key(Path(args.key))
    try:
        spec = spec_from_json(json.loads(args.sign.read_text()))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{args.sign}: {exc}") from None
    signed = spec.signed(key)
    args.sign.write_text(json.dumps(signed.to_json(), indent=1) + "\n")
    _emit(args, signed.to_json(), f"signed spec {signed.seq} with {key.verify_key.encode().hex()[:16]}… "
                                  f"({len(signed.signatures)} signature(s))")
    return 0


def _line(spec: AgentSpec, policy: SpecPolicy) -> str:
    signers = spec.signers() & policy.signers_for(spec.agent_id)
    who = ", ".join("node" if k == policy.node_key else "owner" if k == spec.agent_id else k[:12] for k in signers)
    skills = ", ".join(f"{s.name} {s.version}" for s in spec.skills)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(spec.created))
    return f"spec {spec.seq} {when} {spec.digest()[:12]} signed by {who or 'nobody'}: {skills}"
