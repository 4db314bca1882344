from __future__ import annotations

from pathlib import Path

import pytest
from manifest_helpers import MANIFESTS

from sluice.cli.main import main

GOOD = MANIFESTS / "good"
BAD = MANIFESTS / "bad"


def test_valid_files_print_a_summary_each(capsys: pytest.CaptureFixture[str]) -> None:
    pods = GOOD / "01-namespace-and-pods.yaml"
    node = GOOD / "02-node.yaml"
    assert main(["validate", "-f", str(pods), "--filename", str(node)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"ok  {pods}  (3 objects: 1 Namespace, 2 Pod)",
        f"ok  {node}  (1 object: 1 Node)",
    ]
    assert err == ""


def test_directory_means_its_manifests_in_name_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(GOOD)]) == 0
    out, _ = capsys.readouterr()
    checked = [line.split()[1] for line in out.splitlines()]
    assert checked == [str(path) for path in sorted(GOOD.iterdir())]
    assert f"ok  {GOOD / '06-list.json'}  (2 objects: 1 Namespace, 1 NetworkPolicy)" in out


def test_bad_file_prints_every_problem_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    bad = BAD / "service.yaml"
    assert main(["validate", "-f", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == (
        f"{bad}: document 2: Service default/web: spec.ports[0].port: "
        "port 70000 out of range 1-65535 (line 13)"
    )
    assert lines[1].startswith(
        f"{bad}: document 3: NetworkPolicy shop/allow: spec.ingress[0].from[0].ipBlock.cidr: "
        '"10.0.0.1/24" is not a valid CIDR: host bits set'
    )
    assert lines[2] == f"sluice validate: {bad}: 2 problems"


def test_stops_at_the_first_bad_file(capsys: pytest.CaptureFixture[str]) -> None:
    node = GOOD / "02-node.yaml"
    args = [
        "validate",
        "-f",
        str(node),
        "-f",
        str(BAD / "pod.yaml"),
        "-f",
        str(BAD / "service.yaml"),
    ]
    assert main([*args, "-f", str(GOOD / "04-endpointslice.yaml")]) == 1
    out, err = capsys.readouterr()
    assert out == f"ok  {node}  (1 object: 1 Node)\n"
    assert (
        "pod.yaml: document 1: Pod default/broken: spec.containers[0].ports[0].containerPort" in err
    )
    assert "service.yaml" not in err
    assert "endpointslice" not in err
    assert err.splitlines()[-1].endswith("pod.yaml: 1 problem; 2 later files not checked")


def test_missing_file_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["validate", "-f", str(missing)]) == 1
    _, err = capsys.readouterr()
    assert f"{missing}: cannot read: No such file or directory" in err


def test_directory_without_manifests_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    assert main(["validate", "-f", str(tmp_path)]) == 1
    _, err = capsys.readouterr()
    assert f"{tmp_path}: no *.yaml, *.yml or *.json files in directory" in err


def test_syntax_error_names_the_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [a\n")
    assert main(["validate", "-f", str(broken)]) == 1
    _, err = capsys.readouterr()
    assert err.startswith(f"{broken}: document 1: invalid YAML: ")
    assert "(line 5, column 1)" in err.splitlines()[0]


def test_empty_file_is_valid(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert main(["validate", "-f", str(empty)]) == 0
    assert capsys.readouterr().out == f"ok  {empty}  (0 objects)\n"


def test_help_explains_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["validate", "--help"])
    assert exited.value.code == 0
    out, _ = capsys.readouterr()
    assert "-f PATH, --filename PATH" in out
    assert "directory" in out
    assert "exit status" in out


def test_filename_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["validate"])
    assert exited.value.code == 2
    assert "-f/--filename" in capsys.readouterr().err
