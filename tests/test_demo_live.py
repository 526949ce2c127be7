"""``tiltflow demo-data --live`` (issue 14 item 9): the session written in acquisition order at a pace,
file for file the same as the batch demo once finished."""

import json
import re

import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.io.movies import MovieError, read_movie_header
from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.testing.live import LiveScenario, write_live_session

TINY = {"n_series": 2, "n_tilts": 5, "size": (64, 64), "n_frames": 3, "seed": 3}


def _files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != "truth.json"
    }


@pytest.mark.parametrize("flavour", ["serialem", "tomo5"])
def test_live_session_equals_the_batch_demo(tmp_path, flavour, one_torch_thread):
    config = DemoConfig(**TINY, flavour=flavour)
    batch = write_demo_dataset(tmp_path / "batch", config)
    events = []
    live = write_live_session(
        tmp_path / "live",
        config,
        LiveScenario(interval_s=0, pieces=3),
        on_event=lambda kind, info: events.append((kind, info)),
    )
    assert _files(tmp_path / "live") == _files(tmp_path / "batch")
    live.pop("live")
    for s in live["series"]:
        assert s.pop("live") == {"acquired_tilts": 5, "truncated": [], "late": []}
    assert live == batch
    kinds = [k for k, _ in events]
    assert kinds.count("movie-done") == 10 and kinds.count("series-done") == 2
    mdocs = [info["sections"] for k, info in events if k == "mdoc"]
    # SerialEM: one more section per tilt; Tomo5: the whole mdoc once, at the end of the series
    assert mdocs == ([1, 2, 3, 4, 5] * 2 if flavour == "serialem" else [5, 5])


def test_movies_are_written_in_pieces_and_the_mdoc_grows(tmp_path, one_torch_thread):
    seen = []

    def on_event(kind, info):
        if kind == "movie-start":
            seen.append(("start", info["tilt"], sum(1 for _ in (tmp_path / "s").glob("*.mdoc"))))
        if kind == "mdoc":
            text = (tmp_path / "s" / f"{info['series']}.mdoc").read_text()
            seen.append(("mdoc", info["sections"], len(re.findall(r"\[ZValue", text))))

    write_live_session(
        tmp_path / "s",
        DemoConfig(**{**TINY, "n_series": 1}),
        LiveScenario(interval_s=0.05, pieces=4),
        on_event=on_event,
    )
    assert seen[:4] == [("start", 0, 0), ("mdoc", 1, 1), ("start", 1, 1), ("mdoc", 2, 2)]


def test_bad_acquisitions_truncated_aborted_late(tmp_path, one_torch_thread):
    order = []
    sc = LiveScenario(
        interval_s=0, pieces=4, flavours=["serialem", "tomo5"], truncated={(0, 1)}, aborted={1: 3}, late={(0, 3)}
    )
    truth = write_live_session(
        tmp_path / "s",
        DemoConfig(**TINY),
        sc,
        on_event=lambda k, i: order.append((k, i.get("movie", "").split("/")[-1])),
    )
    s0, s1 = truth["series"]
    assert s0["live"] == {"acquired_tilts": 5, "truncated": [1], "late": [3]}
    assert s1["live"]["acquired_tilts"] == 3
    with pytest.raises(MovieError, match="truncated"):
        read_movie_header(tmp_path / "s" / s0["tilts"][1]["movie"])
    assert read_movie_header(tmp_path / "s" / s0["tilts"][3]["movie"]).n_frames == 3
    assert order[-2][1] == s0["tilts"][3]["movie"].split("/")[-1]  # the late movie comes last
    assert (tmp_path / "s" / "Position_2.mdoc").read_text().count("[ZValue") == 3
    assert len(list((tmp_path / "s" / "frames").glob("Position_2_*"))) == 3


def test_cli_live_and_help_defaults(tmp_path, one_torch_thread):
    help_text = CliRunner().invoke(build_cli(), ["demo-data", "--help"]).output
    for shown in (
        "[default: 3]",
        "[default: 21]",
        "[default: 512, 512]",
        "[default: 6]",
        "[default: 2.76]",
        "[default: 5.0]",
        "[default: 4]",
    ):
        assert shown in help_text, shown
    result = CliRunner().invoke(
        build_cli(),
        [
            "demo-data",
            str(tmp_path / "d"),
            "--live",
            "--interval",
            "0",
            "--series",
            "1",
            "--tilts",
            "3",
            "--size",
            "64",
            "64",
            "--frames",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "TS_01: 3 tilts written" in result.output
    assert json.loads((tmp_path / "d" / "truth.json").read_text())["live"]["interval_s"] == 0
    bad = CliRunner().invoke(build_cli(), ["demo-data", str(tmp_path / "e"), "--live", "--pieces", "0"])
    assert bad.exit_code == 2 and "--pieces 0" in bad.output


def test_replay_of_a_finished_folder(tmp_path, one_torch_thread):
    from tiltflow.testing.live import replay_session

    config = DemoConfig(**TINY, flavour="tomo5")
    batch = write_demo_dataset(tmp_path / "batch", config)
    kinds = []
    truth = replay_session(
        tmp_path / "batch",
        tmp_path / "live",
        LiveScenario(interval_s=0, pieces=2),
        on_event=lambda kind, info: kinds.append(kind),
    )
    assert _files(tmp_path / "live") == _files(tmp_path / "batch")
    assert [s["tsId"] for s in truth["series"]] == [s["tsId"] for s in batch["series"]]
    assert kinds.count("movie-done") == 10 and kinds.count("mdoc") == 2
