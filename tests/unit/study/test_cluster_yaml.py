"""Checks of cluster.yaml, the Ray cluster-launcher config for AWS.

Schema: the config goes through the same offline steps as `ray up` before it contacts AWS
(`prepare_config` merges Ray's AWS defaults.yaml, then `validate_config` checks
ray/autoscaler/ray-schema.json plus the head-type and min/max-workers rules); the raw file is
also checked against the schema on its own. Neither step needs boto3 or AWS credentials.
Then a security lint, and a lint that every key in the file carries a comment.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

pytestmark = pytest.mark.unit

CLUSTER_YAML = Path(__file__).resolve().parents[3] / "cluster.yaml"
SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture(scope="module")
def config(text: str) -> dict[str, Any]:
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def ray_validate(cfg: dict[str, Any]) -> None:
    """What `ray up` runs on the config before any AWS call (commands._bootstrap_config)."""
    validate_config(prepare_config(copy.deepcopy(cfg)))


def all_commands(cfg: dict[str, Any]) -> list[str]:
    return [cmd for key in COMMAND_LISTS for cmd in cfg.get(key) or []]


def worker_types(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    head = cfg["head_node_type"]
    return {k: v for k, v in cfg["available_node_types"].items() if k != head}


# --- Ray's schema ---------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_validation(config: dict[str, Any]) -> None:
    ray_validate(config)


def test_raw_cluster_yaml_matches_rays_schema(
    config: dict[str, Any], schema: dict[str, Any]
) -> None:
    jsonschema.validate(config, schema)


def _unknown_top_level_key(cfg: dict[str, Any]) -> None:
    cfg["max_nodes"] = 3


def _wrong_type_max_workers(cfg: dict[str, Any]) -> None:
    cfg["max_workers"] = "many"


def _unknown_node_type_key(cfg: dict[str, Any]) -> None:
    cfg["available_node_types"][cfg["head_node_type"]]["spot"] = True


def _fractional_gpu_resource(cfg: dict[str, Any]) -> None:
    next(iter(worker_types(cfg).values()))["resources"]["GPU"] = 0.5


def _unknown_auth_key(cfg: dict[str, Any]) -> None:
    cfg["auth"]["password"] = "hunter2"


def _missing_resources(cfg: dict[str, Any]) -> None:
    del next(iter(worker_types(cfg).values()))["resources"]


SCHEMA_VIOLATIONS = [
    _unknown_top_level_key,
    _wrong_type_max_workers,
    _unknown_node_type_key,
    _fractional_gpu_resource,
    _unknown_auth_key,
    _missing_resources,
]


@pytest.mark.parametrize("mutate", SCHEMA_VIOLATIONS, ids=lambda f: f.__name__.strip("_"))
def test_rays_validation_rejects_schema_violations(
    config: dict[str, Any], schema: dict[str, Any], mutate: Any
) -> None:
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_rays_validation_rejects_unknown_head_node_type(config: dict[str, Any]) -> None:
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_validate(broken)


# --- cluster shape --------------------------------------------------------------------------


def test_cluster_shape(config: dict[str, Any]) -> None:
    assert config["cluster_name"] == "atsweep"
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"]
    assert isinstance(config["max_workers"], int) and config["max_workers"] > 0
    workers = worker_types(config)
    gpus = sorted(t["resources"].get("GPU", 0) for t in workers.values())
    assert 1 in gpus and max(gpus) >= 4, gpus
    for name, node_type in workers.items():
        assert "min_workers" in node_type and "max_workers" in node_type, name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        assert node_type["max_workers"] <= config["max_workers"], name
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0


def test_ray_pin_matches_the_local_ray(config: dict[str, Any]) -> None:
    # `ray up` needs the same Ray version on the laptop and the cluster.
    pins = {
        m.group(1)
        for cmd in all_commands(config)
        for m in re.finditer(r"ray\[[^\]]*\]==([\w.]+)", cmd)
    }
    assert pins == {ray.__version__}, f"pin ray=={ray.__version__} in setup_commands, not {pins}"


def test_setup_installs_the_project_from_the_mount(config: dict[str, Any]) -> None:
    assert config["file_mounts"].get("~/atsweep") == "."
    assert any("pip install -e ~/atsweep" in cmd for cmd in config["setup_commands"])
    assert {".venv", "results"} <= set(config["rsync_exclude"])


def test_shared_storage_is_an_s3_uri_in_the_environment(config: dict[str, Any]) -> None:
    assert any(
        re.search(r"export ATSWEEP_STORAGE=s3://\S+", cmd) for cmd in config["setup_commands"]
    )


def test_start_commands_stop_ray_first_and_head_runs_the_autoscaler(
    config: dict[str, Any],
) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert config[key][0] == "ray stop", key
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--head" in head_start and "--port=6379" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    worker_start = next(c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert "--address=$RAY_HEAD_IP:6379" in worker_start


# --- security lint --------------------------------------------------------------------------


def test_no_open_cidr_anywhere(text: str) -> None:
    assert "0.0.0.0/0" not in text
    assert "::/0" not in text


def _covers_port(rule: dict[str, Any], port: int) -> bool:
    if str(rule.get("IpProtocol")) == "-1":
        return True
    return int(rule.get("FromPort", -1)) <= port <= int(rule.get("ToPort", -1))


def test_ingress_is_ssh_from_a_restricted_cidr_only(config: dict[str, Any]) -> None:
    rules = config["provider"]["security_group"]["IpPermissions"]
    ssh_rules = [r for r in rules if _covers_port(r, 22)]
    assert ssh_rules, "declare the SSH rule so the CIDR is explicit"
    for rule in rules:
        # Only SSH is opened; dashboard, GCS and MLflow go through SSH tunnels.
        assert rule["IpProtocol"] == "tcp" and rule["FromPort"] == rule["ToPort"] == 22, rule
        cidrs = [r["CidrIp"] for r in rule.get("IpRanges", [])]
        assert cidrs and "0.0.0.0/0" not in cidrs, rule
        assert not rule.get("Ipv6Ranges"), rule


def test_dashboard_binds_to_localhost_only(config: dict[str, Any]) -> None:
    hosts = [
        m.group(1)
        for cmd in all_commands(config)
        for m in re.finditer(r"--dashboard-host[= ]+(\S+)", cmd)
    ]
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start
    assert hosts and set(hosts) == {"127.0.0.1"}, hosts


def test_token_auth_on_every_ray_start(config: dict[str, Any]) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts, key
        for cmd in starts:
            assert "export RAY_AUTH_MODE=token" in cmd, cmd
            assert cmd.index("export RAY_AUTH_MODE=token") < cmd.index("ray start"), cmd
    for cmd in all_commands(config):
        assert "RAY_AUTH_MODE=disabled" not in cmd, cmd


def test_the_same_token_reaches_every_node(config: dict[str, Any]) -> None:
    # Workers get file_mounts from the head, so one local token ends up on all nodes.
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_mlflow_server_listens_on_localhost_only(config: dict[str, Any]) -> None:
    servers = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(servers) == 1, servers
    hosts = re.findall(r"(?:--host|-h)[= ]+(\S+)", servers[0])
    assert hosts == ["127.0.0.1"], hosts
    for cmd in all_commands(config):
        if "mlflow" in cmd:
            assert "0.0.0.0" not in cmd, cmd


def test_workers_are_spot_and_head_is_on_demand(config: dict[str, Any]) -> None:
    workers = worker_types(config)
    assert workers
    for name, node_type in workers.items():
        market = node_type["node_config"].get("InstanceMarketOptions", {})
        assert market.get("MarketType") == "spot", name
    head = config["available_node_types"][config["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"]


# --- every key commented --------------------------------------------------------------------

_KEY_LINE = re.compile(
    r"""^(?P<indent>\s*)(?P<dash>-\s+)?(?:"[^"]+"|'[^']+'|[A-Za-z_~][\w.~/-]*)\s*:(?:\s|$)"""
)
_DASH_LINE = re.compile(r"^(?P<indent>\s*)-(?:\s|$)")


def uncommented_keys(source: str) -> list[str]:
    """Key lines with neither an inline comment nor a comment on the previous non-blank line.

    Covers every mapping key at every depth. Inside a list item only the item's first line
    (`- key: ...`) is checked: one comment describes the whole item.
    """
    problems: list[str] = []
    open_items: list[int] = []  # indents of the `-` items the current line may belong to
    previous = ""
    in_block_scalar_of: int | None = None
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if in_block_scalar_of is not None:
            if indent > in_block_scalar_of:
                previous = stripped
                continue
            in_block_scalar_of = None
        if stripped.startswith("#"):
            previous = stripped
            continue
        dash = _DASH_LINE.match(line)
        while open_items and open_items[-1] >= indent:
            open_items.pop()
        key = _KEY_LINE.match(line)
        if key and (dash or not open_items):
            commented = " #" in line or previous.startswith("#")
            if not commented:
                problems.append(f"line {number}: {stripped}")
        if dash:
            open_items.append(indent)
        if re.search(r":\s*[>|][-+]?\s*(#.*)?$", line) or re.match(r"^-\s+[>|][-+]?$", stripped):
            in_block_scalar_of = indent
        previous = stripped
    return problems


def test_every_key_is_commented(text: str) -> None:
    assert uncommented_keys(text) == []


def test_the_comment_lint_catches_bare_keys() -> None:
    sample = (
        "# why\n"
        "a: 1\n"
        "b: 2\n"
        "c:  # why\n"
        "    d: 3\n"
        "    # why\n"
        '    "~/e": "."\n'
        "    f:\n"
        "        # why\n"
        "        - g: 1\n"
        "          h: 2\n"
        "        - i: 3\n"
        "cmds:  # why\n"
        "    - >-\n"
        "        k: not a key\n"
        "l: 4\n"
    )
    found = [p.split(":", 1)[0] for p in uncommented_keys(sample)]
    assert found == ["line 3", "line 5", "line 8", "line 12", "line 16"]


def test_the_comment_lint_sees_the_keys_of_cluster_yaml(text: str) -> None:
    keys = [line for line in text.splitlines() if _KEY_LINE.match(line)]
    assert len(keys) > 40
