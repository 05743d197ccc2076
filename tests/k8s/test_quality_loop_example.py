"""k8s/examples/quality-loop: the CronJob's arguments are a `cascade judge` command line that
parses, reads the capture sink's default stream and pushes to a Pushgateway; runs never overlap
(a run resumes from the labels on its volume)."""

from __future__ import annotations

from tests.k8s.conftest import container, one
from tests.k8s.kustomize import Obj


def test_the_cronjob_runs_a_valid_judge_command(rendered: dict[str, list[Obj]]) -> None:
    from extproc.cli.judge import run
    from extproc.cli.main import build_parser
    from extproc.config.capture import SinkSettings

    job = one(rendered["quality-loop"], "CronJob", "cascade-judge")
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    template = job["spec"]["jobTemplate"]  # spec.template, as in a Deployment
    args = container(template)["args"]
    parsed = build_parser().parse_args(args)
    assert parsed.func is run
    assert parsed.pairs == [f"redis://redis:6379/0?stream={SinkSettings().stream}"]
    assert parsed.push_gateway and parsed.max_pairs
    mounts = {m["mountPath"] for m in container(template)["volumeMounts"]}
    assert str(parsed.output.parent) in mounts and str(parsed.config.parent) in mounts
