"""`edgeci keys init ROLE [--dir DIR] [--force]` and `edgeci keys list --policy FILE`.

init creates an Ed25519 key pair for a signing role (compose, boot-test, approver): DIR/<role>.key
(PKCS#8 PEM, 0600) and DIR/<role>.pub, and prints where each half goes: the private key into CI as a
protected secret file for that one job, the public key into the production host's trust policy.
"""

from __future__ import annotations

import argparse

from edgeci.config import Config

HELP = "create signing keys for compose, boot-test and approvers, or list a trust policy's keys"
ROLE_CHOICES = ("compose", "boot-test", "approver")
STAGE_OF = {"compose": "compose", "boot-test": "boot-test", "approver": "gate"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="create ROLE.key (0600) and ROLE.pub")
    init.add_argument("role", metavar="ROLE", choices=ROLE_CHOICES, help=", ".join(ROLE_CHOICES))
    init.add_argument("--dir", default=None, help="where to write them (default: <build dir>/keys)")
    init.add_argument("--force", action="store_true", help="replace an existing key pair")
    lst = sub.add_parser("list", help="the roles, names and key ids a trust policy trusts")
    lst.add_argument("--policy", required=True, metavar="FILE", help="the trust policy (e.g. /etc/edgeci/trust.yaml)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "list":
        return _list(args)
    return _init(args, cfg)


def _init(args: argparse.Namespace, cfg: Config) -> int:
    from pathlib import Path

    from edgeci.errors import ConfigError, KeyFileError
    from edgeci.evidence.rolekeys import SigningKey, env_var, write_key_pair
    from edgeci.ui import say

    role = args.role
    directory = Path(args.dir) if args.dir else cfg.build_dir / "keys"
    try:
        priv, pub = write_key_pair(SigningKey.generate(role), directory, force=args.force)
    except KeyFileError as e:
        raise ConfigError(e.message, where=e.where, fix=e.fix) from None
    from edgeci.evidence.rolekeys import load_public_key

    key = load_public_key(pub, role)
    var, stage = env_var(role), STAGE_OF[role]
    say(f"created the {role} key {key.keyid}")
    say(f"  private: {priv} (mode 0600): keep it out of git, out of logs, off the production host")
    say(f"  public:  {pub}")
    say("")
    say(f"GitLab: Settings > CI/CD > Variables: add {var}, type File, Protected, environment scope of the")
    say(f"  {stage} job only, with the content of {priv.name}; only that job sees it (a file path in {var}).")
    say(f"Jenkins: add a 'Secret file' credential with {priv.name} and bind it only in the {stage} stage:")
    say(f"  withCredentials([file(credentialsId: 'edgeci-{role}-key', variable: '{var}')]) {{ sh 'edgeci {stage} …' }}")
    say("Production host: copy the .pub there and list it under its role in the trust policy (trust.yaml):")
    say("  keys:")
    say(f"    {role}:")
    say(f"      - name: {role}-{key.keyid[:8]}")
    if role == "approver":
        say("        approver: USER        # optional: this key may approve only as USER")
    say(f"        file: /etc/edgeci/keys/{pub.name}")
    say(f"then delete {priv} from this machine once CI holds it.")
    return 0


def _list(args: argparse.Namespace) -> int:
    from edgeci.trust import load_policy
    from edgeci.ui import say

    policy = load_policy(args.policy)
    say(f"trust policy {policy.source}")
    for role in ROLE_CHOICES:
        keys = policy.keys_for(role)
        if not keys:
            say(f"  {role:<10} (no key: {role} evidence cannot verify)")
        for k in keys:
            bound = f" approves only as {k.approver}" if k.approver else ""
            say(f"  {role:<10} {k.name or '(unnamed)':<20} {k.keyid}{bound}")
    prod = policy.production
    signed = "required" if policy.settings.require_signed_production else "not required"
    say(f"  production GPG key {prod.gpg_key or '(none)'}"
        + (f" in {prod.gpg_homedir}" if prod.gpg_homedir else "") + f"; signed production {signed}")
    return 0
