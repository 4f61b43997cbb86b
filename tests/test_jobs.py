"""`curate submit / status / logs / stop` against a real Ray head started on loopback.

The head runs with token authentication (RAY_AUTH_MODE=token, a random token), so the same
head checks the happy path and the missing / wrong token messages. Everything listens on
127.0.0.1 (checked); the head is stopped by killing only its own processes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.images import encode, textured

CURATE = [sys.executable, "-m", "curation.cli"]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_of(marker: str) -> set[int]:
    """Processes whose command line names ``marker`` (the head's temp dir), with descendants;
    never this process or its ancestors."""
    import psutil

    me = psutil.Process()
    spared = {me.pid, *(p.pid for p in me.parents())}
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []) and proc.pid not in spared:
                found.add(proc.pid)
                found.update(c.pid for c in proc.children(recursive=True))
        except psutil.Error:
            continue
    return found - spared


def _stop_head(marker: str) -> None:
    import psutil

    procs = []
    for pid in _processes_of(marker):
        try:
            procs.append(psutil.Process(pid))
            procs[-1].send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


@pytest.fixture(scope="module")
def head(s3_endpoint):
    """A Ray head with a job server on 127.0.0.1, token auth on; yields (address, env).

    Its environment holds the test S3 server's endpoint and credentials (``s3_endpoint``):
    jobs reach a bucket the way cluster nodes do, through their own environment."""
    import psutil

    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths live here
    token = secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` is this one
    )
    env.pop("RAY_ADDRESS", None)
    dash = _free_port()
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1"]
    cmd += [f"--port={_free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
    cmd += [f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp}"]
    cmd += [f"--dashboard-agent-listen-port={_free_port()}", "--num-cpus=1"]
    cmd += ["--disable-usage-stats"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        pids = _processes_of(temp)
        listening = {
            c.laddr.ip
            for pid in pids
            for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _curate(env: dict, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CURATE, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )


def _one_line_error(proc: subprocess.CompletedProcess, starts: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith(f"error: {starts}"), proc.stderr


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for i in range(6):
        (root / f"im{i}.jpg").write_bytes(encode(textured(600, 560, i)))
    return root


def _submit(head, images: Path, output: Path, *extra, stage: str = "download") -> str:
    address, env = head
    proc = _curate(
        env,
        "submit",
        "--stage",
        stage,
        "--input",
        f"folder:{images}",
        "--output",
        output,
        "--set",
        "download.min_side=256",
        "--set",
        "download.samples_per_shard=2",
        "--address",
        address,
        *extra,
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.startswith("curate-demo-") and "INFO" not in proc.stderr
    return job_id


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_submit_then_follow_with_status_and_logs(head, images, tmp_path):
    address, env = head
    out = tmp_path / "run"
    start = time.monotonic()
    job_id = _submit(head, images, out)
    submit_s = time.monotonic() - start
    follow = subprocess.Popen(  # `curate logs --follow` streams while status is polled
        [*CURATE, "logs", job_id, "--follow", "--address", address],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen, deadline = [], time.monotonic() + 180
    while time.monotonic() < deadline:
        proc = _curate(env, "status", job_id, "--address", address, "--json")
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        seen.append(info["status"])
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    followed, follow_err = follow.communicate(timeout=60)
    assert info["status"] == "SUCCEEDED", _curate(env, "logs", job_id, "--address", address).stdout
    print(f"submit {submit_s:.1f} s (CLI, with imports); states seen: {sorted(set(seen))}")
    assert follow.returncode == 0 and follow_err.strip().endswith(f"job {job_id}: SUCCEEDED")
    assert "wrote 3 new shard(s)" in followed
    assert info["metadata"]["curate_output"] == str(out)
    download = info["run"]["stages"][0]
    assert (download["state"], download["shards_done"], download["shards_total"]) == ("done", 3, 3)
    assert (download["kept"], download["rejected"], download["failed"]) == (6, 0, 0)

    text = _curate(env, "status", job_id, "--address", address).stdout
    assert text.startswith(f"job {job_id}: SUCCEEDED")
    assert "download  done           3/3        6" in text
    listing = _curate(env, "status", "--address", address).stdout
    assert job_id in listing and str(out) in listing

    logs = _curate(env, "logs", job_id, "--address", address)
    assert (
        logs.returncode == 0 and "[download] images: 6 images, wrote 3 new shard(s)" in logs.stdout
    )

    # No credential in what the job and the run leave behind.
    token = env["RAY_AUTH_TOKEN"]
    card = (out / "run.json").read_text() + (out / "RUNCARD.md").read_text()
    assert token not in card and token not in logs.stdout and token not in json.dumps(info)
    assert json.loads((out / "run.json").read_text())["command"][1:3] == ["run", "--pipeline"]


def _wait_for_end(head, job_id: str, timeout: float = 180) -> dict:
    """`curate status JOB --json` once the job has ended (or the timeout passed)."""
    address, env = head
    deadline = time.monotonic() + timeout
    while True:
        info = json.loads(_curate(env, "status", job_id, "--address", address, "--json").stdout)
        if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > deadline:
            return info
        time.sleep(2)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_submit_a_run_into_an_object_store(head, images, s3_bucket):
    """A job writes its run folder into a bucket: the URL reaches the job as given (not made a
    local path), `curate status` follows the run there, and a live run in it refuses another
    submission."""
    from curation.run_lock import acquire_run_lock, release_run_lock
    from manifests import validate
    from manifests.storage import location

    address, env = head
    out = s3_bucket + "/run"
    job_id = _submit(head, images, out)
    info = _wait_for_end(head, job_id)
    assert info["status"] == "SUCCEEDED", _curate(env, "logs", job_id, "--address", address).stdout
    assert info["metadata"]["curate_output"] == out
    download = info["run"]["stages"][0]
    assert (download["state"], download["shards_done"], download["kept"]) == ("done", 3, 6)
    assert validate(out).ok

    lease = acquire_run_lock(location(out), ["download"])
    try:
        busy = _curate(env, "submit", "--stage", "download", "--output", out, "--address", address)
    finally:
        release_run_lock(location(out), lease)
    _one_line_error(busy, f"{out} is in use by another curate run (pid {os.getpid()} ")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_jobs_ray_work_runs_on_the_jobs_cluster(head, images, tmp_path):
    """Inside a job, the stages use the cluster that runs the job, not an embedded Ray of
    their own: Ray records the job's `curate run` as the job's driver, and the patch stage
    sizes its tasks from the head's single CPU (an embedded Ray here would see every core)."""
    from curation.config import PipelineConfig
    from curation.stages.download import DownloadStage
    from tests.test_patch_stage import write_filter_manifests

    address, env = head
    out = tmp_path / "run"
    cfg = PipelineConfig.model_validate(
        {
            "name": "demo",
            "sources": [{"name": "images", "kind": "folder", "path": [str(images)]}],
            "download": {"min_side": 256, "samples_per_shard": 2},  # as _submit sets them
        }
    )
    DownloadStage(cfg, out, log=lambda *_: None).run()  # a folder: no Ray
    write_filter_manifests(out)
    job_id = _submit(head, images, out, stage="patch")
    info = _wait_for_end(head, job_id)
    logs = _curate(env, "logs", job_id, "--address", address).stdout
    assert info["status"] == "SUCCEEDED", logs
    # Ray's record of the job's driver (a fresh process: the SDK caches a token per process)
    probe = "import sys; from curation.jobs import connect; "
    probe += "print(connect(sys.argv[1]).get_job_info(sys.argv[2]).driver_info is not None)"
    driver = subprocess.run(
        [sys.executable, "-c", probe, address, job_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert driver.stdout.strip() == "True", driver.stderr  # it joined the job's cluster
    assert "[patch] 2 task slot(s) of 0.5 CPU on 1 node(s)" in logs  # the head: 1 CPU
    assert json.loads((out / "patch" / "index.json").read_text())["shards"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_stop_a_job(head, images, tmp_path):
    address, env = head
    job_id = _submit(head, images, tmp_path / "run")
    proc = _curate(env, "stop", job_id, "--address", address)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"job {job_id}: STOPPED"
    status = _curate(env, "status", job_id, "--address", address).stdout
    assert status.startswith(f"job {job_id}: STOPPED")
    logs = _curate(env, "logs", job_id, "--follow", "--address", address, timeout=60)
    assert logs.returncode == 0 and logs.stderr.strip().endswith("STOPPED")


@pytest.mark.timeout(180)
def test_bad_addresses_tokens_and_outputs_are_one_line(head, images, tmp_path):
    address, env = head
    _one_line_error(
        _curate(env, "status", "--address", f"127.0.0.1:{_free_port()}"),
        "cannot reach the Ray job server at http://127.0.0.1:",
    )
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    _one_line_error(
        _curate(no_token, "status", "--address", address),
        f"the Ray cluster at {address} requires a token and none was sent",
    )
    wrong = env | {"RAY_AUTH_TOKEN": secrets.token_hex(16)}
    _one_line_error(
        _curate(wrong, "logs", "some-job", "--address", address),
        f"the Ray cluster at {address} refused the token",
    )
    _one_line_error(
        _curate(env, "status", "no-such-job", "--address", address),
        f"no job 'no-such-job' on {address}",
    )
    # an output this machine's head cannot write, and one another run is writing
    _one_line_error(
        _curate(
            env, "submit", "--stage", "download", "--output", "/proc/curate-x", "--address", address
        ),
        "the output folder /proc/curate-x is not writable",
    )
    busy = tmp_path / "busy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from curation.run_lock import acquire_run_lock;"
            "acquire_run_lock(Path(sys.argv[1]), ['download']); print('locked', flush=True);"
            "time.sleep(600)",
            str(busy),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = _curate(env, "submit", "--stage", "download", "--output", busy, "--address", address)
        _one_line_error(proc, f"{busy} is in use by another curate run (pid {holder.pid} ")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    jobs = json.loads(_curate(env, "status", "--address", address, "--json").stdout)
    assert str(busy) not in [j["output"] for j in jobs]  # refused before submitting


def test_addresses_and_token_settings_checked_before_any_request(tmp_path, monkeypatch):
    from curation.jobs import DEFAULT_ADDRESS, JobError, connect, resolve_address

    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address() == DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:8265")
    assert resolve_address() == "http://10.0.0.5:8265"
    assert resolve_address("https://head.example:443/") == "https://head.example:443"
    with pytest.raises(JobError, match="ray://127.0.0.1:10001 is not a job server address"):
        resolve_address("ray://127.0.0.1:10001")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "nope"))
    with pytest.raises(JobError, match="RAY_AUTH_TOKEN_PATH=.*nope cannot be read"):
        connect("127.0.0.1:1")  # Ray itself would abort the process on this
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "empty"))
    with pytest.raises(JobError, match="is empty"):
        connect("127.0.0.1:1")
