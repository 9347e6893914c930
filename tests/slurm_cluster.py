"""A real single-node SLURM cluster for the tests: Debian's slurm-wlm and munge, started in a folder of the
test's own (config, state, spool, logs, munge key and socket), stopped at the end. Nothing under /etc is
used or changed; the clients find the cluster through SLURM_CONF.

Settings that differ from a site's defaults, and why:
- `AuthInfo=cred_expire=10`: SLURM holds a requeued job for cred_expire seconds (default 120) before it may
  start again; 10 keeps a test's requeue cycle short.
- `SchedulerParameters=sched_interval=2`: the scheduler looks at pending jobs every 2 s (default 60).
- `ProctrackType=proctrack/linuxproc`, `TaskPlugin=task/none`: no cgroup setup in a container. SLURM
  still signals every process of the job, which is what the tests are about.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "scancel")


def missing() -> str | None:
    """Why no cluster can start here, or None."""
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if absent:
        return f"SLURM or munge not installed ({', '.join(absent)} missing): run `make slurm` as root with apt-get"
    if os.geteuid() != 0:
        return "the test cluster's slurmd runs jobs as their user, which needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self) -> Cluster:
        root = self.root
        for sub in ("state", "spool", "log", "munge"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "munge").chmod(0o700)
        key, sock = root / "munge" / "munge.key", root / "munge" / "socket"
        subprocess.run([_tool("mungekey"), "--create", f"--keyfile={key}"], check=True)
        subprocess.run(
            [_tool("munged"), f"--socket={sock}", f"--key-file={key}", f"--pid-file={root / 'munge' / 'pid'}",
             f"--log-file={root / 'log' / 'munged.log'}", f"--seed-file={root / 'munge' / 'seed'}", "--force"],
            check=True,
        )  # fmt: skip
        host = socket.gethostname()
        cpus = os.cpu_count() or 1
        self.conf.write_text(
            f"""ClusterName=pigg
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=30
MinJobAge=3600
JobRequeue=1
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
        subprocess.run([_tool("slurmctld"), "-f", str(self.conf), "-i"], check=True, env=self.env)
        subprocess.run([_tool("slurmd"), "-f", str(self.conf)], check=True, env=self.env)
        deadline = time.time() + 60
        while "idle" not in self.run("sinfo", "--noheader", "--format=%t", check=False):
            if time.time() > deadline:
                raise RuntimeError("the test cluster's node never came up:\n" + self.logs())
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        """Cancel what is left, then end the daemons (SIGKILL for one that lingers)."""
        subprocess.run([_tool("scancel"), "--user=root"], env=self.env, capture_output=True)
        deadline = time.time() + 45  # KillWait is 30 s
        while self.run("squeue", "--noheader", check=False).strip() and time.time() < deadline:
            time.sleep(1)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/pid"):
            path = self.root / pid_file
            if not path.is_file():
                continue
            pid = int(path.read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)

    def run(self, *command: str, check: bool = True) -> str:
        done = subprocess.run([_tool(command[0]), *command[1:]], capture_output=True, text=True, env=self.env)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def submit(self, script: Path, cwd: Path, env: dict | None = None) -> int:
        done = subprocess.run(
            [_tool("sbatch"), "--parsable", str(script)],
            capture_output=True, text=True, cwd=cwd, env={**self.env, **(env or {})},
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"sbatch {script} failed: {done.stdout}{done.stderr}")
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        return dict(
            re.findall(r"(\w+)=(\S*)", self.run("scontrol", "show", "job", str(job_id), "--oneliner"))
        )

    def wait(self, job_id: int, until, timeout: float, every: float = 1.0) -> dict[str, str]:
        """Poll the job until `until(job)` holds; the job's record then."""
        deadline = time.time() + timeout
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if time.time() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {job.get('JobState')} after {timeout}s:\n{self.logs()}"
                )
            time.sleep(every)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:])
            for p in sorted((self.root / "log").glob("*.log"))
        )
