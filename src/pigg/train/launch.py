"""Several training processes on torchrun: `pigg train CONFIG --nproc N [--nnodes M ...]`.

pigg starts no process group of its own: it runs torch's own launcher (torch.distributed.run, what the
`torchrun` command is, in a process of its own) with `python -m pigg train ...` as the worker command, and everything
distributed (process groups, DDP, FSDP, DeepSpeed) is the Trainer's and accelerate's. What this module adds
is the part torchrun lacks for long jobs:

- a stop signal (SIGTERM, or SIGUSR1 from SLURM) is passed straight to the training processes, which save
  one checkpoint at the same step and exit normally; torchrun's agent ignores both (on SIGTERM it would
  end its workers while they save, and it dies on SIGUSR1 without passing it on);
- the exit code says what happened: 0 done, 75 stopped with a checkpoint (the run's summary says so), or
  torchrun's own code when a worker failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from pigg.errors import ConfigError

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass(frozen=True)
class Topology:
    """Where this launcher's processes sit among all of the job's."""

    nproc: int = 1  # training processes on this machine (one per GPU)
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None  # the first node's address, for several nodes
    master_port: int = 29500

    def check(self) -> None:
        if self.nproc < 1 or self.nnodes < 1:
            raise ConfigError("--nproc and --nnodes must be at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"--node-rank {self.node_rank} must be between 0 and --nnodes - 1")
        if self.nnodes > 1 and not self.master_addr:
            raise ConfigError("--nnodes above 1 needs --master-addr: the first node's address")

    @property
    def distributed(self) -> bool:
        return self.nproc * self.nnodes > 1


def torchrun_command(topology: Topology, worker_args: list[str]) -> list[str]:
    """The torch.distributed.run command line that starts `python -m pigg <worker_args>` per process."""
    topology.check()
    if topology.nnodes == 1 and topology.master_addr is None:
        # one machine: torchrun picks a free port itself, so two jobs on one node never collide
        where = ["--standalone"]
    else:
        where = [
            f"--nnodes={topology.nnodes}",
            f"--node_rank={topology.node_rank}",
            f"--master_addr={topology.master_addr or '127.0.0.1'}",
            f"--master_port={topology.master_port}",
        ]
    return [
        sys.executable,
        "-m",
        "pigg.train.launch",  # torchrun's own run(), see _torchrun below
        *where,
        f"--nproc_per_node={topology.nproc}",
        "--signals_to_handle=SIGINT,SIGHUP,SIGQUIT",  # not SIGTERM: see _torchrun
        "-m",
        "pigg",
        *worker_args,
    ]


def _torchrun(argv: list[str]) -> int:
    """torch.distributed.run's `run` on torchrun's arguments: a failed training process is reported in one
    line (it printed its own error), where torchrun's `main` would add a traceback of its own."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # SLURM sends SIGTERM to every process of a job, this agent included: torchrun's own handler would end
    # the training processes while they save (torchrun_command leaves SIGTERM out of --signals_to_handle).
    # They got the signal themselves (and pigg's launcher passes it on), so the agent lets them finish. A
    # Python handler, unlike SIG_IGN, is not inherited across exec.
    for number in FORWARDED_SIGNALS:
        signal.signal(number, lambda number, frame: None)
    try:
        run(parse_args(argv))
    except SignalException as exc:  # Ctrl-C or a kill: torchrun has already ended its workers
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        print(f"pigg: training process {rank} (pid {failure.pid}) ended with {how}", file=sys.stderr)
        return code if code > 0 else 1
    return 0


def interrupt_once_under_torchrun() -> None:
    """In a training process started by torchrun, the first SIGINT interrupts and later ones are ignored.

    A Ctrl-C reaches such a process twice: from the terminal (the whole process group) and once more from
    torchrun's agent, which passes it on to its workers while they are already unwinding from the first.
    The second KeyboardInterrupt lands wherever the process is by then (a `finally`, gloo's teardown,
    interpreter shutdown) and prints a traceback from there. Ignoring it cannot hang the job: the agent
    kills a worker still alive 30 seconds after it passed the signal on.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or threading.current_thread() is not threading.main_thread():
        return

    def interrupt(number, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)


def _workers(launcher_pid: int) -> list:
    import psutil

    try:
        return psutil.Process(launcher_pid).children()
    except psutil.NoSuchProcess:
        return []


def launch(topology: Topology, worker_args: list[str], run_dir: Path) -> int:
    """Run the workers to the end; the exit code is 75 when the run stopped early with a checkpoint."""
    from pigg.train.control import EXIT_RESUMABLE

    command = torchrun_command(topology, worker_args)
    print(
        f"pigg: starting {topology.nproc} training process(es) on this node"
        + (f" ({topology.nnodes} nodes, this is node {topology.node_rank})" if topology.nnodes > 1 else "")
        + " with torch.distributed.run",
        flush=True,
    )
    process = subprocess.Popen(command)

    def forward(number, frame):
        name = signal.Signals(number).name
        workers = _workers(process.pid)
        print(f"pigg: {name} received, passing it to {len(workers)} training process(es)", flush=True)
        for worker in workers:
            worker.send_signal(number)

    previous = {number: signal.signal(number, forward) for number in FORWARDED_SIGNALS}
    try:
        code = process.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group: torchrun ends its workers
        print("pigg: interrupted; waiting for the training processes to end", flush=True)
        # torchrun's agent ends its workers (SIGKILL after 30 s): a second Ctrl-C here would only print a
        # traceback and leave them behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        process.wait()
        return 130
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if code != 0:
        return code
    from pigg.train.build import RUN_SUMMARY

    summary = run_dir / RUN_SUMMARY  # written by the first node's rank 0
    if summary.is_file() and json.loads(summary.read_text()).get("status") == "stopped":
        return EXIT_RESUMABLE
    return 0


if __name__ == "__main__":
    raise SystemExit(_torchrun(sys.argv[1:]))
