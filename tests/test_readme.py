"""The README's two commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README must start with a bash block of the two commands"
    assert text.index("```bash") < 40, "the commands come first"
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    return lines


def test_readme_starts_with_two_commands() -> None:
    cmds = readme_commands()
    assert len(cmds) == 2
    demo, test = cmds
    assert "demo" in demo and (ROOT / demo.split()[0]).exists()
    assert (ROOT / test.split()[0]).exists()
    assert "sraq demo" in (ROOT / demo.split()[0]).read_text()


def test_ci_runs_the_readme_test_command() -> None:
    test_cmd = readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in [line.strip() for line in ci if not line.strip().startswith("#")]


def test_readme_documents_every_setting_and_interface_variable() -> None:
    from orchestrator.settings import Settings

    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`SRAQ_{name.upper()}`" in readme, f"SRAQ_{name.upper()} is not in the README's table"
    interfaces = ROOT.parent / "shared" / "INTERFACES.md"
    if interfaces.exists():
        for var in set(re.findall(r"`(SRAQ_[A-Z_]+)`", interfaces.read_text())):
            assert f"`{var}`" in readme, f"{var} (INTERFACES.md) is not documented in the README"
