"""Command-line flags generated once from the configuration: a flag for every shared setting
(grouped by section) and for every registered algorithm's own settings, for ``train``,
``describe`` and the ``flower`` commands alike (``--client-ratio`` for ``client_ratio``)."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Dict, List, Sequence, Tuple

from fedgraph.algorithms.registry import algorithm_names, resolve
from fedgraph.config import SECTIONS, TrainConfig, shared_fields


def on_off(text: str) -> bool:
    """``on``/``off`` (also true/false, yes/no, 1/0) as a bool."""
    if text.lower() in ('on', 'true', 'yes', '1'):
        return True
    if text.lower() in ('off', 'false', 'no', '0'):
        return False
    raise argparse.ArgumentTypeError(f'expected on or off, got {text!r}')


_SCALARS = {'float': float, 'int': int, 'str': str, 'bool': on_off}


def _argument(field: dataclasses.Field) -> Dict[str, object]:
    """``add_argument`` keywords of a setting, from its annotation: a scalar, ``Optional``
    of one, or a tuple (``Tuple[float, float, float]``: three values; ``Tuple[int, ...]``:
    one or more); a bool takes ``on`` or ``off``, or nothing for on."""
    kind = str(field.type).replace('Optional[', '').rstrip(']') if str(field.type).startswith(
        'Optional[') else str(field.type)
    if kind.startswith('Tuple['):
        parts = [part.strip() for part in kind[len('Tuple['):].rstrip(']').split(',')]
        nargs = '+' if parts[-1] == '...' else len(parts)
        return {'type': _SCALARS[parts[0]], 'nargs': nargs,
                'metavar': parts[0].upper()}
    if kind == 'bool':  # --flag alone is on
        return {'type': on_off, 'nargs': '?', 'const': True, 'metavar': 'on|off'}
    return {'type': _SCALARS[kind]}


def algorithm_settings() -> Dict[str, Tuple[dataclasses.Field, List[str]]]:
    """Every algorithm setting's field (the first one with help) and the algorithms that
    have it."""
    out: Dict[str, Tuple[dataclasses.Field, List[str]]] = {}
    for name in algorithm_names():
        for field in dataclasses.fields(resolve(name).Settings):
            known, owners = out.get(field.name, (field, []))
            if 'help' not in known.metadata and 'help' in field.metadata:
                known = field
            out[field.name] = (known, owners + [name])
    return out


def add_config_flags(parser: argparse.ArgumentParser,
                     sections: Sequence[str] = tuple(SECTIONS), algorithms: bool = True) -> None:
    """Adds ``--algorithm``, the shared settings of ``sections`` and (``algorithms``) every
    algorithm's own settings to ``parser``."""
    shared = shared_fields()
    if algorithms:
        summaries = '; '.join(f'{name}: {resolve(name).summary}' for name in algorithm_names())
        parser.add_argument('--algorithm', default='pfedrec', choices=algorithm_names(),
                            help=summaries)
    for section in sections:
        group = parser.add_argument_group(f'{section} settings')
        for name in SECTIONS[section]:
            field = shared[name]
            default = field.default
            if isinstance(default, tuple):
                default = list(default)
            group.add_argument('--' + name.replace('_', '-'), default=default,
                               help=field.metadata.get('help', ''), **_argument(field))
    if not algorithms:
        return
    group = parser.add_argument_group(
        'algorithm settings', "each belongs to the algorithms its help names; default: the "
                              "algorithm's; another algorithm's setting is an error")
    for name, (field, owners) in algorithm_settings().items():
        defaults = ', '.join(
            f'{owner} {_shown(getattr(resolve(owner).Settings(), name))}' for owner in owners)
        group.add_argument('--' + name.replace('_', '-'), default=argparse.SUPPRESS,
                           help=f"{field.metadata.get('help', '')} ({defaults})",
                           **_argument(field))


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return 'on' if value else 'off'
    if isinstance(value, tuple):
        return ' '.join(str(v) for v in value)
    return str(value)


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of the flags :func:`add_config_flags` added: the shared
    settings it has flags for, and the algorithm settings given on the command line."""
    values = {name: getattr(args, name) for name in shared_fields() if hasattr(args, name)}
    values.update({name: getattr(args, name) for name in algorithm_settings()
                   if hasattr(args, name)})
    values.update(overrides)
    return TrainConfig(**{'algorithm': args.algorithm, **values})


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> List[str]:
    """The destinations of the flags written in ``argv`` (not those left at their defaults),
    as ``parser`` parses them."""
    actions = [action for action in parser._actions if action.dest != argparse.SUPPRESS]
    defaults = [action.default for action in actions]
    for action in actions:
        action.default = argparse.SUPPRESS
    try:
        parsed, _ = parser.parse_known_args(list(argv), argparse.Namespace())
    finally:
        for action, default in zip(actions, defaults):
            action.default = default
    return [action.dest for action in actions if hasattr(parsed, action.dest)]


#: The settings a resumed run may change: how long it goes on and how it runs, not what it
#: trains (a change of ``rounds`` under a target epsilon is refused: the noise was calibrated
#: to the rounds).
RESUMABLE_CHANGES = ('rounds', 'patience', 'eval_every', 'checkpoint_every', 'threads')


def resumed_config(saved: TrainConfig, args: argparse.Namespace, given: Sequence[str],
                   folder: str) -> Tuple[TrainConfig, Dict[str, object]]:
    """The configuration a run resumed from ``folder`` continues with: its ``saved`` one with
    the :data:`RESUMABLE_CHANGES` among the flags ``given`` applied; returns it and the
    changes. Any other flag given with a value that differs from the run's is an error: a
    resumed run trains what it was configured to train."""
    settings = algorithm_settings()
    changes: Dict[str, object] = {}
    for name in given:
        if name == 'algorithm' or name in shared_fields() or name in settings:
            value = getattr(args, name)
            value = tuple(value) if isinstance(value, list) else value
            if value != getattr(saved, name):
                changes[name] = value
    refused = [name for name in changes
               if name not in RESUMABLE_CHANGES
               or (name == 'rounds' and saved.dp_epsilon is not None)]
    if refused:
        given_values = ', '.join(f'--{name.replace("_", "-")} {_shown(changes[name])} (the run '
                                 f'has {_shown(getattr(saved, name))})' for name in refused)
        raise ValueError(f'--resume continues {folder} as its config.json configures it: '
                         f'{given_values}; a resumed run may change only '
                         f'{", ".join("--" + n.replace("_", "-") for n in RESUMABLE_CHANGES)}'
                         f' (not --rounds under --dp-epsilon, whose noise was calibrated to '
                         f'the rounds); train a new run (--out) for other settings')
    if not changes:
        return saved, {}
    return TrainConfig(**{**saved.to_dict(), **changes}), changes


#: What a command raises when it was given something it cannot use (a value out of range, a
#: file that is missing, a folder where a file belongs or one it may not write, a folder that
#: holds a run, a user a run does not know): reported as
#: argparse reports a bad flag.
MISUSE = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
          IsADirectoryError, PermissionError)


def remember_parsers(commands: argparse._SubParsersAction) -> None:
    """Gives every subcommand's parser to its own parsed arguments (``args.parser``)."""
    for parser in commands.choices.values():
        parser.set_defaults(parser=parser)


def run_command(args: argparse.Namespace) -> None:
    """``args.run(args)``; a misuse (:data:`MISUSE`) ends like a bad flag: the command's usage
    line and ``error: ...`` on stderr, exit status 2."""
    try:
        args.run(args)
    except MISUSE as error:
        # A KeyError's str() is the repr of its message.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        args.parser.error(str(message))
