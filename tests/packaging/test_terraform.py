"""terraform/: formatted (tofu fmt), parsed (python-hcl2) and cross-checked, and checkov clean.

Nothing here is applied, and `tofu init`/`validate` would need provider downloads, which this
environment cannot make; docs/deploy.md says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tests.support.packaging import CHART, TERRAFORM, assert_checkov_clean
from veza_local.controlplane import tool

MODULES = TERRAFORM / "modules"
EXAMPLE = TERRAFORM / "examples" / "aws"
REQUIRED_MODULES = {"vpc", "eks", "rds", "elasticache", "s3", "irsa"}


def unquote(value: Any) -> Any:
    return value.strip('"') if isinstance(value, str) else value


def blocks(directory: Path, kind: str) -> dict[str, dict[str, Any]]:
    """Named blocks of one kind (variable, output, module) in a directory's .tf files."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as f:
            parsed = hcl2.load(f)
        for block in parsed.get(kind, []):
            for name, body in block.items():
                found[unquote(name)] = {unquote(k): v for k, v in body.items()}
    return found


def tf_dirs() -> list[Path]:
    return sorted({p.parent for p in TERRAFORM.rglob("*.tf")})


def tofu(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "CHECKPOINT_DISABLE": "1"}
    return subprocess.run([tool("tofu"), *args], cwd=cwd, capture_output=True, text=True, check=False, env=env,
                          timeout=120)


def test_tofu_fmt_check(tmp_path: Path) -> None:
    result = tofu("fmt", "-check", "-recursive", "-diff", cwd=TERRAFORM)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check really checks: a misaligned copy fails it.
    bad = tmp_path / "bad"
    shutil.copytree(MODULES / "s3", bad)
    (bad / "variables.tf").write_text((bad / "variables.tf").read_text().replace("  type        =", "  type=", 1))
    assert tofu("fmt", "-check", cwd=bad).returncode != 0


def test_the_modules_the_issue_asks_for_exist() -> None:
    assert {p.name for p in MODULES.iterdir() if p.is_dir()} >= REQUIRED_MODULES
    assert (EXAMPLE / "main.tf").exists()


@pytest.mark.parametrize("directory", tf_dirs(), ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_every_variable_and_output_is_described_and_typed(directory: Path) -> None:
    variables = blocks(directory, "variable")
    for name, body in variables.items():
        assert unquote(body.get("description", "")).strip(), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"
    for name, body in blocks(directory, "output").items():
        assert unquote(body.get("description", "")).strip(), f"output {name} has no description"
    text = "\n".join(p.read_text() for p in directory.glob("*.tf"))
    used = set(re.findall(r"\bvar\.([a-z0-9_]+)", text))
    assert used <= set(variables), f"undeclared variables: {used - set(variables)}"
    assert set(variables) <= used, f"unused variables: {set(variables) - used}"


@pytest.mark.parametrize("directory", tf_dirs(), ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_module_calls_match_the_modules(directory: Path) -> None:
    calls = blocks(directory, "module")
    text = "\n".join(p.read_text() for p in directory.glob("*.tf"))
    for name, call in calls.items():
        source = (directory / unquote(call["source"])).resolve()
        assert source.is_dir(), f"module {name}: no directory {source}"
        declared = blocks(source, "variable")
        passed = {k for k in call if k not in ("source", "__is_block__", "depends_on", "providers", "count",
                                               "for_each")}
        assert passed <= set(declared), f"module {name} gets unknown inputs {passed - set(declared)}"
        required = {v for v, body in declared.items() if "default" not in body}
        assert required <= passed, f"module {name} misses required inputs {required - passed}"
        outputs = set(blocks(source, "output"))
        used = set(re.findall(rf"\bmodule\.{name}\.([a-z0-9_]+)", text))
        assert used <= outputs, f"module {name} has no outputs {used - outputs}"
    for referenced in set(re.findall(r"\bmodule\.([a-z0-9_]+)\.", text)):
        assert referenced in calls, f"module.{referenced} is used but not declared"


def test_example_installs_the_chart_nats_and_a_platform() -> None:
    main = (EXAMPLE / "main.tf").read_text()
    with (EXAMPLE / "main.tf").open() as f:
        parsed = hcl2.load(f)
    helm_releases = {unquote(n): {unquote(k): v for k, v in b.items()}
                     for r in parsed["resource"] for t, named in r.items() if unquote(t) == "helm_release"
                     for n, b in named.items()}
    assert set(helm_releases) == {"nats", "veza"}
    assert unquote(helm_releases["nats"]["chart"]) == "nats"
    assert "nats-io.github.io/k8s/helm/charts" in unquote(helm_releases["nats"]["repository"])
    chart_path = unquote(helm_releases["veza"]["chart"]).replace("${path.module}", str(EXAMPLE))
    assert Path(chart_path).resolve() == CHART.resolve()
    assert "platform = {" in main and "examples = {" in main, "the chart's example values create the VezaPlatform"
    assert "eks.amazonaws.com/role-arn" in main


def test_checkov_terraform_is_clean(checkov_reports: dict[str, dict[str, Any]]) -> None:
    report = checkov_reports["terraform"]
    assert_checkov_clean(report)
    assert report["summary"]["resource_count"] >= 50
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped == {"CKV_AWS_111", "CKV_AWS_356", "CKV_AWS_109", "CKV2_AWS_62", "CKV_AWS_144"}, skipped


def test_nodes_keep_pods_away_from_instance_metadata() -> None:
    """IMDSv2 only, hop limit 1: a pod (a compromised worker decoding untrusted audio) cannot fetch
    the node's IAM credentials from 169.254.169.254."""
    with (TERRAFORM / "modules" / "eks" / "main.tf").open() as f:
        parsed = hcl2.load(f)
    resources = {(unquote(t), unquote(n)): b for r in parsed["resource"] for t, named in r.items()
                 for n, b in named.items()}
    template = resources[("aws_launch_template", "node")]
    metadata = template["metadata_options"][0]
    assert unquote(metadata["http_tokens"]) == "required"
    assert int(metadata["http_put_response_hop_limit"]) == 1
    group = resources[("aws_eks_node_group", "default")]
    assert "aws_launch_template.node.id" in unquote(group["launch_template"][0]["id"])
