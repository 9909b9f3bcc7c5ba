"""`bfn completion bash|zsh`: a shell completion script for bfn, generated from its own parser, so
every command, subcommand and flag completes and none can go stale.

    eval "$(bfn completion bash)"        # in ~/.bashrc
    eval "$(bfn completion zsh)"         # in ~/.zshrc (through bash completion compatibility)
"""
from __future__ import annotations

import argparse

from bfn_platform.commands.common import command

EPILOG = """examples:
  eval "$(bfn completion bash)"      # add to ~/.bashrc
  eval "$(bfn completion zsh)"       # add to ~/.zshrc
"""


def register(sub) -> None:
    p = command(sub, "completion", __doc__, help="print a shell completion script (bash or zsh)", epilog=EPILOG)
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete in")
    p.set_defaults(func=run)


def words(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], list[str]]:
    """Command path -> what may follow it: subcommand names and flags."""
    out: dict[tuple[str, ...], list[str]] = {}
    options = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    names = [n for a in subs for n in a.choices]
    out[path] = names + options
    for action in subs:
        for name, child in action.choices.items():
            out.update(words(child, path + (name,)))
    return out


def script(table: dict[tuple[str, ...], list[str]], shell: str) -> str:
    cases = "\n".join(f'        "{" ".join(path)}") opts="{" ".join(opts)}" ;;' for path, opts in table.items())
    known = "|" + "|".join(" ".join(path) for path in table if path) + "|"
    prefix = "autoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh" else ""
    return prefix + f'''_bfn() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" w opts known="{known}"
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do  # the longest known command path among the words
        [[ "$known" == *"|${{path:+$path }}$w|"* ]] && path="${{path:+$path }}$w"
    done
    case "$path" in
{cases}
        *) opts="" ;;
    esac
    COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    [[ ${{#COMPREPLY[@]}} -eq 0 ]] && COMPREPLY=( $(compgen -f -- "$cur") )
}}
complete -F _bfn bfn
'''


def run(args) -> int:
    from bfn_platform.cli import build_parser

    print(script(words(build_parser()), args.shell), end="")
    return 0
