"""edgeci's command line: main(argv) -> int, the only place that turns errors into exit codes.

Exit codes: 0 success, 1 the candidate failed, 2 usage, configuration or infrastructure error.
Each command lives in its own module (stages/ for the seven pipeline stages, commands/ for the rest) exposing HELP,
add_arguments(parser) and run(args, cfg) -> int; modules import heavy code lazily inside run().
"""

from __future__ import annotations

import sys
from typing import Any

# name → module. Keep this ordered as the pipeline runs; add a line only when the command works.
COMMANDS: dict[str, str] = {
    "lint": "edgeci.stages.lint",
    "changed": "edgeci.commands.changed",
    "compose": "edgeci.stages.compose",
    "push": "edgeci.stages.push",
    "stage": "edgeci.stages.stage",
    "boot-test": "edgeci.stages.boot_test",
    "approve": "edgeci.commands.approve",
    "gate": "edgeci.stages.gate",
    "promote": "edgeci.stages.promote",
    "verify": "edgeci.commands.verify",
    "rollback": "edgeci.commands.rollback",
    "history": "edgeci.commands.history",
    "run": "edgeci.commands.pipeline",
    "report": "edgeci.commands.report",
    "gitlab": "edgeci.commands.gitlab",
    "jenkins": "edgeci.commands.jenkins",
    "record": "edgeci.commands.record_show",
    "keys": "edgeci.commands.keys",
}


def _version() -> str:
    from edgeci import __version__

    return f"edgeci {__version__}"


def _command_of(args: list[str]) -> str | None:
    """The command word in argv (skipping global options and their values), or None."""
    takes_value = {"--config", "-c", "--set"}
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in takes_value:
            skip = True
        elif not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> Any:
    """The argument parser; with `only`, just that command's module is imported (start-up time: every
    stage runs as its own process in CI), otherwise all of them, for the full help and usage errors."""
    import argparse
    import importlib

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS,
                        help="edgeci.yaml to use (default: ./edgeci.yaml, else the embedded default)")
    common.add_argument("--set", metavar="KEY=VALUE", action="append", default=argparse.SUPPRESS,
                        help="override a config value, e.g. --set composer.backend=weldr (repeatable)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and every external command")

    parser = argparse.ArgumentParser(
        prog="edgeci", parents=[common],
        description="Ship RHEL for Edge / Fedora IoT ostree images from blueprints in git to a fleet.",
        epilog="Exit codes: 0 success, 1 the candidate failed, 2 usage/configuration/infrastructure error.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, parents=[common], help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _overrides(pairs: list[str]) -> dict[str, str]:
    from edgeci.errors import ConfigError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got '{pair}'", fix="e.g. --set composer.backend=weldr")
        out[key.strip()] = value
    return out


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list == ["--version"]:  # fast path: no argparse, no imports
        print(_version())
        return 0

    import logging

    from edgeci.errors import EXIT_ERROR, EdgeCIError
    from edgeci.tools.run import MaskingFilter
    from edgeci.ui import error

    debug = "--debug" in args_list
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(MaskingFilter())
    handler.setFormatter(logging.Formatter("edgeci: %(name)s: %(message)s"))
    root = logging.getLogger("edgeci")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    root.propagate = False

    parser = build_parser(_command_of(args_list))
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:  # argparse: --help exits 0, usage errors exit 2
        return int(e.code or 0)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        from edgeci.config import load_config

        cfg = load_config(getattr(args, "config", None), overrides=_overrides(getattr(args, "set", [])))
        return int(args._module.run(args, cfg))
    except EdgeCIError as e:
        if debug:
            _print_traceback()
        error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as e:  # a bug: still one line, the traceback with --debug
        if debug:
            _print_traceback()
            error(f"internal error: {type(e).__name__}: {e}")
            return EXIT_ERROR
        error(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
        return EXIT_ERROR


def _print_traceback() -> None:
    """The current exception's traceback on stderr, through the secret mask like every other line: exception
    texts quote what servers answered, and servers echo what they were sent."""
    import traceback

    from edgeci.tools.run import mask

    sys.stderr.write(mask(traceback.format_exc()))
    sys.stderr.flush()


def entry() -> None:
    sys.exit(main())
