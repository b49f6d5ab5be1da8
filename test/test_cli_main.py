"""The liquid-control entry point: subcommand table, lazy imports and exit codes."""

import subprocess
import sys

import pytest

from liquid_control.cli.main import COMMANDS, main


@pytest.mark.parametrize('name', [command[0] for command in COMMANDS])
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, '--help'])
    assert exit_info.value.code == 0
    assert f'liquid-control {name}' in capsys.readouterr().out


def test_top_level_help_imports_no_torch():
    code = ('import sys\nfrom liquid_control.cli.main import main\n'
            'try:\n    main(["--help"])\nexcept SystemExit:\n    pass\n'
            'print("torch" in sys.modules)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith('False')


def test_no_subcommand_exits_with_usage(capsys):
    assert main([]) == 2
    assert 'COMMAND' in capsys.readouterr().out


def test_unknown_subcommand_rejected():
    with pytest.raises(SystemExit) as exit_info:
        main(['teleport'])
    assert exit_info.value.code == 2
