"""diffma_cli.profiling: stages are profiler ranges; an observer sees them only inside observe_stages."""

import time

import torch

from diffma_cli.profiling import StageTimer, observe_stages, stage


def recorder(seen):
    def observer(name):
        seen.append(("enter", name))

        class Exit:
            def __enter__(self):
                return None

            def __exit__(self, *exc):
                seen.append(("exit", name))

        return Exit()

    return observer


def test_stages_are_named_profiler_ranges():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as trace:
        with stage("vae"):
            torch.ones(4) + 1
    assert "diffma.vae" in {event.name for event in trace.events()}


def test_the_observer_wraps_each_stage_only_inside_its_block():
    seen = []
    with stage("before"):
        pass
    with observe_stages(recorder(seen)):
        with stage("vae"):
            with stage("clip"):
                pass
    with stage("after"):
        pass
    assert seen == [("enter", "vae"), ("enter", "clip"), ("exit", "clip"), ("exit", "vae")]


def test_observers_nest_and_the_outer_one_comes_back():
    outer, inner = [], []
    with observe_stages(recorder(outer)):
        with observe_stages(recorder(inner)):
            with stage("a"):
                pass
        with stage("b"):
            pass
    assert [name for kind, name in inner if kind == "enter"] == ["a"]
    assert [name for kind, name in outer if kind == "enter"] == ["b"]


def test_cpu_timer_sums_the_time_spent_in_each_stage():
    timer = StageTimer(torch.device("cpu"))
    began = time.perf_counter()
    with observe_stages(timer):
        for _ in range(2):
            with stage("sleep"):
                time.sleep(0.02)
    total = time.perf_counter() - began
    seconds = timer.seconds()
    assert set(seconds) == {"sleep"}
    assert 0.04 <= seconds["sleep"] <= total
