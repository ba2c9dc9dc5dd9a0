"""Process memory (actors.resources): RSS against the cgroup limit, else the host's memory."""

from __future__ import annotations

from actors.resources import Memory, read_memory

STATUS = "Name:\tpython\nVmPeak:\t  900000 kB\nVmRSS:\t  102400 kB\nThreads:\t4\n"
MEMINFO = "MemTotal:       1024000 kB\nMemFree:         512000 kB\n"


def files(tmp_path, *, status=STATUS, meminfo=MEMINFO, v2=None, v1=None):
    paths = {}
    for name, text in (("status", status), ("meminfo", meminfo), ("cgroup_v2", v2), ("cgroup_v1", v1)):
        paths[name] = tmp_path / name
        if text is not None:
            paths[name].write_text(text)
    return paths


def test_resources_cgroup_v2_limit_is_the_denominator(tmp_path):
    m = read_memory(**files(tmp_path, v2="209715200\n"))
    assert m == Memory(rss_bytes=102400 * 1024, limit_bytes=209715200, limit_source="cgroup", percent=50.0)


def test_resources_cgroup_v2_max_means_no_limit_so_the_host_counts(tmp_path):
    m = read_memory(**files(tmp_path, v2="max\n", v1="104857600\n"))
    assert (m.limit_bytes, m.limit_source, m.percent) == (1024000 * 1024, "host", 10.0)


def test_resources_cgroup_v1_limit_and_its_unlimited_sentinel(tmp_path):
    assert read_memory(**files(tmp_path, v1="419430400\n")).percent == 25.0
    m = read_memory(**files(tmp_path, v1="9223372036854771712\n"))  # overwrites the limit
    assert m.limit_source == "host"


def test_resources_without_proc_answers_none(tmp_path):
    for n, missing in enumerate(({"status": None}, {"meminfo": None}, {"status": "VmRSS: garbage\n"})):
        (tmp_path / str(n)).mkdir()
        assert read_memory(**files(tmp_path / str(n), **missing)) is None, missing


def test_resources_reads_this_process_for_real():
    m = read_memory()
    assert m is not None
    assert 0 < m.rss_bytes < m.limit_bytes
    assert 0.0 < m.percent < 100.0
