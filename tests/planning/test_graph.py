"""The dependency graph: order, cycles, dependents, and errors that name the field."""

from __future__ import annotations

import pytest

from dockyard.api.models import JobTemplate
from dockyard.planning import (
    ContainerKey,
    CycleError,
    PlanningError,
    build_graph,
    external_upstreams,
    format_path,
)
from tests.planning.builders import c, job

K = ContainerKey


def test_topological_order_keeps_declaration_order_when_nothing_depends() -> None:
    graph = build_graph([job("a", c("x"), c("y")), job("b", c("z"))])
    assert graph.topological_order() == (K("a", "x"), K("a", "y"), K("b", "z"))


def test_topological_order_puts_upstreams_first_and_breaks_ties_by_declaration() -> None:
    # web and worker both need app; app needs db, declared last.
    graph = build_graph(
        [job("backend", c("web", "app"), c("worker", "app"), c("app", "db"), c("db"), c("cron"))]
    )
    assert [k.container for k in graph.topological_order()] == [
        "db",
        "app",
        "web",
        "worker",
        "cron",
    ]


def test_cross_job_dependencies_order_jobs_containers() -> None:
    graph = build_graph([job("front", c("web", "back/api")), job("back", c("api", "db"), c("db"))])
    assert graph.topological_order() == (K("back", "db"), K("back", "api"), K("front", "web"))


def test_find_cycles_returns_the_loop_as_a_path() -> None:
    graph = build_graph([job("j", c("web", "app"), c("app", "web"), c("db"))])
    cycles = graph.find_cycles()
    assert cycles == [(K("j", "web"), K("j", "app"), K("j", "web"))]
    assert format_path(cycles[0]) == "j/web -> j/app -> j/web"


def test_find_cycles_across_jobs_and_several_knots() -> None:
    graph = build_graph(
        [
            job("a", c("x", "b/y"), c("s", "s")),
            job("b", c("y", "c/z")),
            job("c", c("z", "a/x"), c("free")),
        ]
    )
    assert graph.find_cycles() == [
        (K("a", "x"), K("c", "z"), K("b", "y"), K("a", "x")),
        (K("a", "s"), K("a", "s")),
    ]


def test_find_cycles_is_empty_for_a_dag() -> None:
    graph = build_graph([job("j", c("a"), c("b", "a"), c("c", "a", "b"))])
    assert graph.find_cycles() == []


def test_topological_order_of_a_cycle_raises_naming_the_field_and_the_loop() -> None:
    graph = build_graph([job("j", c("ok"), c("web", "app"), c("app", "web"))])
    with pytest.raises(CycleError) as caught:
        graph.topological_order()
    assert caught.value.field == "jobs[j].containers[web].dependsOn"
    assert caught.value.cycle == (K("j", "web"), K("j", "app"), K("j", "web"))
    assert "dependency cycle: j/web -> j/app -> j/web" in str(caught.value)


def test_dependents_of_is_transitive_across_jobs_in_topological_order() -> None:
    graph = build_graph(
        [
            job("web", c("nginx", "app"), c("app", "db/pg"), c("sidecar")),
            job("db", c("pg"), c("backup", "pg")),
            job("report", c("cron", "web/app")),
        ]
    )
    assert graph.dependents_of(K("db", "pg")) == (
        K("web", "app"),
        K("web", "nginx"),
        K("db", "backup"),
        K("report", "cron"),
    )
    assert graph.dependents_of(K("db", "pg"), transitive=False) == (
        K("web", "app"),
        K("db", "backup"),
    )
    assert graph.dependents_of(K("web", "sidecar")) == ()


def test_upstreams_of_direct_and_transitive() -> None:
    graph = build_graph(
        [job("web", c("nginx", "app", "cache"), c("app", "db/pg"), c("cache")), job("db", c("pg"))]
    )
    assert graph.upstreams_of(K("web", "nginx")) == (K("web", "app"), K("web", "cache"))
    # Topological order: cache is declared before pg and needs nothing.
    assert graph.upstreams_of(K("web", "nginx"), transitive=True) == (
        K("web", "cache"),
        K("db", "pg"),
        K("web", "app"),
    )
    with pytest.raises(KeyError):
        graph.upstreams_of(K("web", "nope"))


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("db", "'db' is not a container of this job"),
        ("other/db", "'other/db' is not a container of job 'other' (no such job)"),
        ("data/nope", "'data/nope' is not a container of job 'data'"),
    ],
)
def test_unknown_references_name_the_field(ref: str, message: str) -> None:
    with pytest.raises(PlanningError) as caught:
        build_graph([job("backend", c("api", ref)), job("data", c("pg"))])
    assert caught.value.field == "jobs[backend].containers[api].dependsOn"
    assert str(caught.value) == f"jobs[backend].containers[api].dependsOn: {message}"


def test_external_upstreams_are_allowed_and_stay_out_of_the_order() -> None:
    graph = build_graph([job("web", c("app", "db/pg"))], external=[K("db", "pg")])
    assert graph.topological_order() == (K("web", "app"),)
    assert graph.upstreams_of(K("web", "app")) == (K("db", "pg"),)
    assert graph.dependents_of(K("db", "pg")) == (K("web", "app"),)


def test_duplicate_names_are_errors() -> None:
    with pytest.raises(PlanningError, match=r"^jobs\[j\]\.containers\[a\]: container names"):
        build_graph([job("j", c("a"), c("a"))])
    with pytest.raises(PlanningError, match=r"^jobs\[j\]: job names must be unique"):
        build_graph([job("j", c("a")), job("j", c("b"))])


def test_works_on_the_api_job_templates() -> None:
    """The admission webhook can check a Deployment's jobs for cycles with the same graph."""
    templates = [
        JobTemplate.model_validate(
            {
                "name": "web",
                "containers": [
                    {"name": "nginx", "image": "nginx:1", "dependsOn": ["app"]},
                    {"name": "app", "image": "app:1", "dependsOn": ["db/pg"]},
                ],
            }
        ),
        JobTemplate.model_validate(
            {
                "name": "db",
                "containers": [{"name": "pg", "image": "pg:1", "dependsOn": ["web/nginx"]}],
            }
        ),
    ]
    graph = build_graph(templates)
    assert graph.find_cycles() == [
        (K("web", "nginx"), K("db", "pg"), K("web", "app"), K("web", "nginx"))
    ]


def test_a_long_chain_does_not_hit_the_recursion_limit() -> None:
    names = [f"c{i}" for i in range(3000)]
    containers = [c(names[0])] + [c(name, names[i]) for i, name in enumerate(names[1:])]
    graph = build_graph([job("j", *reversed(containers))])
    assert [k.container for k in graph.topological_order()] == names
    assert graph.find_cycles() == []
    assert len(graph.dependents_of(K("j", "c0"))) == 2999


def test_external_upstreams_lists_what_a_one_job_plan_needs() -> None:
    web = job("web", c("app", "db/pg", "cache"), c("cache", "kv/redis", "db/pg"))
    assert external_upstreams([web]) == [K("db", "pg"), K("kv", "redis")]
    assert external_upstreams([web, job("db", c("pg"))]) == [K("kv", "redis")]
