"""Container log files (CRI and docker json-file) through the real Tailer, in tmp_path.

The files are written as containerd and dockerd write them: containerd splits a
line longer than 16 KiB into ``P`` parts ended by an ``F`` part; dockerd splits it
into entries whose ``log`` has no final newline; both streams share one file.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_in_process
from tests.support.shipper import nginx_line, site, write_config
from tests.test_tail import Store, make
from tirreno_shipper.config import LogSource
from tirreno_shipper.reader import file_chunks
from tirreno_shipper.tail.container import (
    MALFORMED,
    TOO_LONG,
    ContainerName,
    Framing,
    Selector,
    container_input,
    container_name,
    unframe,
)

PART = 16 * 1024  # containerd's and dockerd's split size
STAMP = "2026-12-02T14:00:00.123456789Z"
CID = "0" * 63 + "1"


def cri(text: str, stream: str = "stdout", *, split: int = PART) -> bytes:
    """``text`` as containerd writes it: P parts of ``split`` bytes, then an F part."""
    data = text.encode()
    parts = [data[i : i + split] for i in range(0, len(data), split)] or [b""]
    out = b""
    for i, part in enumerate(parts):
        tag = b"F" if i == len(parts) - 1 else b"P"
        out += STAMP.encode() + b" " + stream.encode() + b" " + tag + b" " + part + b"\n"
    return out


def docker(text: str, stream: str = "stdout", *, split: int = PART) -> bytes:
    """``text`` as dockerd's json-file driver writes it (a long line split in entries)."""
    data = text + "\n"
    parts = [data[i : i + split] for i in range(0, len(data), split)]
    return b"".join(
        json.dumps({"log": p, "stream": stream, "time": STAMP}, ensure_ascii=False).encode() + b"\n"
        for p in parts
    )


def write(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def framed(runtime: str, streams: tuple[str, ...] = ("stdout",)) -> dict[str, Any]:
    return {"framing": Framing(runtime, streams, 65536)}  # type: ignore[arg-type]


def test_cri_parts_are_one_record_at_the_first_part_offset(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    long = "x" * (PART * 2 + 100)
    write(log, cri("one") + cri(long) + cri("err", "stderr") + cri("two"))
    store = Store()
    tailer = make(log, **framed("cri"))
    assert store.drain(tailer) == [b"one", long.encode(), b"two"]
    offsets = [off for chunk in store.chunks for off, _ in chunk.lines]
    assert offsets == [0, len(cri("one")), len(cri("one") + cri(long)) + len(cri("err", "stderr"))]
    tailer.close()


def test_an_unfinished_record_ends_the_chunk_before_its_first_part(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    whole = cri("y" * (PART + 10))
    first_part = whole[: whole.index(b"\n") + 1]
    write(log, cri("one") + first_part)
    store = Store()
    tailer = make(log, **framed("cri"))
    assert store.drain(tailer) == [b"one"]
    assert store.checkpoints()[0].offset == len(cri("one"))
    write(log, whole[len(first_part) :] + cri("two"))
    assert store.drain(tailer) == [b"y" * (PART + 10), b"two"]
    assert store.checkpoints()[0].offset == log.stat().st_size
    tailer.close()


def test_a_restart_inside_a_record_reads_it_whole_once(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    whole = cri("z" * (PART * 3))
    write(log, cri("a") + whole[: PART + 200])
    store = Store()
    tailer = make(log, **framed("cri"))
    assert store.drain(tailer) == [b"a"]
    tailer.close()
    write(log, whole[PART + 200 :])
    again = make(log, checkpoints=store.checkpoints(), **framed("cri"))
    assert store.drain(again) == [b"z" * (PART * 3)]
    again.close()


def test_streams_interleaved_inside_a_record(tmp_path: Path) -> None:
    """containerd writes each stream from its own goroutine: a stderr line may come between
    a stdout line's parts. With both streams, each is joined on its own."""
    log = tmp_path / "0.log"
    out = cri("o" * (PART + 5))
    nl = out.index(b"\n") + 1
    write(log, out[:nl] + cri("e1", "stderr") + out[nl:] + cri("e2", "stderr"))
    store = Store()
    tailer = make(log, **framed("cri", ("stdout", "stderr")))
    assert sorted(store.drain(tailer)) == sorted([b"o" * (PART + 5), b"e1", b"e2"])
    tailer.close()
    store2 = Store()
    only_out = make(log, **framed("cri"))
    assert store2.drain(only_out) == [b"o" * (PART + 5)]
    only_out.close()


def test_held_back_end_never_splits_another_streams_record() -> None:
    f = Framing("cri", ("stdout", "stderr"), 65536)
    lines = [
        (0, b"t stderr P e-a"),
        (10, b"t stdout P o-a"),  # unfinished: the chunk ends before it...
        (20, b"t stderr F e-b"),  # ...so the stderr record that straddles it waits too
    ]
    assert f.unwrap(lines, 30, final=False) == ([], [], 0)
    assert f.unwrap(lines, 30, final=True) == ([(0, b"e-ae-b"), (10, b"o-a")], [], 30)


def test_docker_json_file_partial_entries_joined(tmp_path: Path) -> None:
    log = tmp_path / f"{CID}-json.log"
    long = "é" * PART  # 2 bytes each in UTF-8: the split counts characters
    write(log, docker("one") + docker(long) + docker("err", "stderr") + docker("two"))
    store = Store()
    tailer = make(log, **framed("docker"))
    assert store.drain(tailer) == [b"one", long.encode(), b"two"]
    tailer.close()


def test_malformed_and_too_long_are_skipped_with_a_reason() -> None:
    f = Framing("cri", ("stdout",), 300)
    lines = [(0, b"garbage"), (8, b"t stdout X nope"), (30, b"t stdout F " + b"x" * 400)]
    assert f.unwrap(lines, 500, final=False) == (
        [],
        [(0, MALFORMED), (8, MALFORMED), (30, TOO_LONG)],
        500,
    )
    d = Framing("docker", ("stdout",), 300)
    assert d.unwrap([(0, b"{}"), (3, b"[1]")], 9, final=False)[1] == [
        (0, MALFORMED),
        (3, MALFORMED),
    ]


def test_kubelet_names_and_selection() -> None:
    path = f"/var/log/containers/web-7d4b9_shop_nginx-{'a' * 64}.log"
    assert container_name(path) == ContainerName("web-7d4b9", "shop", "nginx")
    assert container_name("/var/log/nginx/access.log") is None
    sel = Selector({"namespace": ["shop", "ingress-*"], "pod": [], "container": ["nginx"]}, {})
    assert sel(path)
    assert not sel(path.replace("_shop_", "_kube-system_"))
    assert not sel(path.replace("_nginx-", "_php-"))
    assert not sel("/var/log/nginx/access.log")
    excl = Selector({}, {"namespace": [], "pod": ["web-*"], "container": []})
    assert not excl(path) and excl(path.replace("web-7d4b9", "api-1"))
    assert Selector({}, {})("/var/log/nginx/access.log")


def test_config_container_keys() -> None:
    src = LogSource.model_validate(
        {"path": "/var/log/containers/*.log", "container": "cri", "include": {"namespaces": ["a"]}}
    )
    framing, select = container_input(src)
    assert framing is not None and select is not None
    assert container_input(LogSource(path="/x.log")) == (None, None)
    with pytest.raises(ValueError, match="set container"):
        LogSource.model_validate({"path": "/x.log", "streams": ["stderr"]})
    with pytest.raises(ValueError, match="streams is empty"):
        LogSource.model_validate({"path": "/x.log", "container": "docker", "streams": []})


def test_kubelet_rotation_through_the_symlink_and_a_restart(tmp_path: Path) -> None:
    """/var/log/containers/x.log links to /var/log/pods/.../0.log; the kubelet renames 0.log
    to 0.log.<time> and containerd reopens 0.log. Live and across a restart, every record
    is read once: the rotated file is found beside the link's target."""
    pod = tmp_path / "pods" / "shop_web-1_uid" / "nginx"
    pod.mkdir(parents=True)
    links = tmp_path / "containers"
    links.mkdir()
    real = pod / "0.log"
    real.touch()
    link = links / f"web-1_shop_nginx-{'b' * 64}.log"
    link.symlink_to(real)
    store = Store()
    tailer = make(str(links / "*.log"), **framed("cri"))
    write(real, cri("l1"))
    assert store.drain(tailer) == [b"l1"]
    os.rename(real, pod / "0.log.20261202-140000")
    write(pod / "0.log.20261202-140000", cri("l2"))  # written before containerd reopens
    write(real, cri("l3"))
    assert store.drain(tailer) == [b"l2", b"l3"]
    tailer.close()
    # Down: one more line, a rotation, lines in the new file.
    write(real, cri("l4"))
    os.rename(real, pod / "0.log.20261202-140100")
    write(real, cri("l5"))
    again = make(str(links / "*.log"), checkpoints=store.checkpoints(), **framed("cri"))
    assert store.drain(again) == [b"l4", b"l5"]
    again.close()


def test_whole_file_reads_unframe_records_split_across_chunks(tmp_path: Path) -> None:
    """backfill and the dry run read whole files in chunks: a record whose parts straddle
    two chunks is carried to the second, at its first part's offset."""
    log = tmp_path / "0.log"
    long = "q" * (PART * 2 + 7)
    write(log, cri("a") + cri(long) + cri("b") + cri("e", "stderr") + cri("c"))
    framing = Framing("cri", ("stdout",), 65536)
    chunks = list(unframe(file_chunks(str(log), Framing.RAW_LINE_MAX, chunk_lines=2), framing))
    records = [line for c in chunks for line in c.lines]
    assert [r for _, r in records] == [b"a", long.encode(), b"b", b"c"]
    assert records[1][0] == len(cri("a"))
    assert chunks[-1].end_offset == log.stat().st_size
    for before, after in itertools.pairwise(chunks):
        assert before.end_offset == after.start_offset


def test_dry_run_and_check_read_selected_container_logs(tmp_path: Path) -> None:
    """`run --once --dry-run` and `check` see what `run` reads: the lines inside the
    framing, of the selected containers only."""
    links = tmp_path / "containers"
    links.mkdir()
    mine = links / f"web-1_shop_nginx-{'c' * 64}.log"
    other = links / f"api-1_kube-system_app-{'d' * 64}.log"
    write(mine, cri(nginx_line("/shop/1").rstrip("\n")) + cri("notice", "stderr"))
    write(mine, cri(nginx_line("/shop/" + "x" * (PART + 10)).rstrip("\n")))
    write(other, cri(nginx_line("/other/1").rstrip("\n")))
    entry = {"path": str(links / "*.log"), "container": "cri", "include": {"namespaces": ["shop"]}}
    cfg = write_config(
        tmp_path / "c.yaml", [site("s", "http://127.0.0.1:9/sensor/", mine, log=entry)]
    )
    out = run_in_process("run", "-c", str(cfg), "--once", "--dry-run")
    assert out.returncode == 0, out.stderr
    urls = [json.loads(line)["fields"]["url"] for line in out.stdout.splitlines() if line]
    assert [u[:8] for u in urls] == ["/shop/1", "/shop/xx"]
    checked = run_in_process("check", "-c", str(cfg))
    assert "lines parse as nginx_combined" in checked.stdout, checked.stdout
    assert "other" not in checked.stdout
