"""A real Flower deployment on this machine: a SuperLink and SuperNodes as separate processes.

:class:`LocalDeployment` starts ``flower-superlink`` and one ``flower-supernode`` per
partition of the users, all on ``127.0.0.1``, each SuperNode talking to the SuperLink
through a :class:`ByteCounter` (a TCP relay that counts what crosses it, so the bytes on the
wire are measured, not estimated), and submits the run with ``flwr run``. Across machines
the same commands run with the SuperLink's address in place of ``127.0.0.1`` (see
``docs/flower.md``).

Since Flower 1.41 the Fleet API, which SuperNodes use, is HTTP (earlier releases spoke gRPC). By
default every connection is TLS and every SuperNode authenticates: the deployment writes a
certificate authority, the SuperLink's certificate and a key pair per SuperNode
(:mod:`fedgraph.flower.certificates`) and registers the SuperNodes' public keys with the
SuperLink before they start; ``insecure=True`` (``--insecure``) runs without either.

``isolation`` is Flower's isolation mode. With ``'subprocess'`` (Flower's default) the
SuperLink and every SuperNode start their own ``flower-superexec``; with ``'process'`` they
are started with ``--isolation process`` and the deployment starts one ``flower-superexec``
per SuperNode, pointed at that node's Runtime API, and one for the SuperLink. Either way a
SuperExec launches a new ``flwr-clientapp`` (or ``flwr-serverapp``) process per task, with the
task's token: in Flower 1.42 neither app process outlives its task.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from fedgraph.config import TrainConfig
from fedgraph.files import load_metrics, read_json
from fedgraph.flower.certificates import write_credentials
from fedgraph.flower.payloads import config_to_run_config

LINK_NAME = 'fedgraph-local'
ISOLATION_MODES = ('subprocess', 'process')


def write_app(directory: Path, config: TrainConfig, **settings) -> Path:
    """Writes a Flower App (its ``pyproject.toml``) that runs ``config`` with fedgraph's
    apps; ``settings`` are the apps' own run settings (``out``, ``timeout``, ``min-nodes``).
    ``flwr run DIRECTORY SUPERLINK`` submits it."""
    directory.mkdir(parents=True, exist_ok=True)
    run_config = {**config_to_run_config(config), **settings}
    lines = ['[build-system]', 'requires = ["hatchling"]', 'build-backend = "hatchling.build"',
             '', '[project]', 'name = "fedgraph-flower"', 'version = "1.0.0"',
             'description = "fedgraph on Flower"', 'license = "MIT"', 'dependencies = []', '',
             '[tool.flwr.app]', 'publisher = "fedgraph"', '',
             '[tool.flwr.app.components]', 'serverapp = "fedgraph.flower.apps:serverapp"',
             'clientapp = "fedgraph.flower.apps:clientapp"', '', '[tool.flwr.app.config]']
    lines += [f'{key} = {json.dumps(value)}' for key, value in run_config.items()]
    path = directory / 'pyproject.toml'
    path.write_text('\n'.join(lines) + '\n')
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class ByteCounter:
    """A TCP relay from ``127.0.0.1:port`` to ``target`` that counts the bytes sent each way:
    :attr:`up` from the connecting side (a SuperNode), :attr:`down` to it."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(('127.0.0.1', 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(('127.0.0.1', self.target_port))
            except OSError:  # the SuperLink is gone
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, 'up'),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 'down'),
                             daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                sink.sendall(data)
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return {'up': self.up, 'down': self.down}

    def close(self) -> None:
        self._server.close()


def _executable(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent),
                                                      os.environ.get('PATH', '')]))
    if found is None:
        raise FileNotFoundError(f"{name} not found: pip install 'fedgraph-rec[flower]'")
    return found


class LocalDeployment:
    """A SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1, each a separate process.

    Node ``p`` holds users ``p, p + num_nodes, ...`` (its ``node-config`` partition). Logs,
    the Flower App, ``FLWR_HOME`` and the credentials (``workdir/credentials``) go to
    ``workdir``. ``insecure``: no TLS and no node authentication. ``isolation``: one of
    :data:`ISOLATION_MODES` (see the module's description).
    """

    def __init__(self, workdir: Path, num_nodes: int, insecure: bool = False,
                 isolation: str = 'subprocess'):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f'isolation must be one of {ISOLATION_MODES}, not {isolation!r}')
        self.workdir = Path(workdir).resolve()
        self.num_nodes = num_nodes
        self.insecure = insecure
        self.isolation = isolation
        self.link_port = free_port()
        self.home = self.workdir / 'flwr-home'
        self.logs = self.workdir / 'logs'
        self.link: Optional[subprocess.Popen] = None
        self.nodes: List[Optional[subprocess.Popen]] = []
        # The SuperExecs this deployment starts (isolation 'process'): the SuperLink's, and
        # one per SuperNode, in the nodes' order.
        self.link_executor: Optional[subprocess.Popen] = None
        self.node_executors: List[subprocess.Popen] = []
        self.counters: List[ByteCounter] = []

    def _spawn(self, command: List[str], log_name: str) -> subprocess.Popen:
        log = open(self.logs / log_name, 'w')
        # Own process group: stopping a SuperNode also stops the ClientApp it spawned.
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                env=self._env(), start_new_session=True)

    def _env(self) -> Dict[str, str]:
        # The SuperLink and SuperNodes start flwr-serverapp and flwr-clientapp from PATH:
        # put this interpreter's scripts first, activated environment or not.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get('PATH', '')])
        env = dict(os.environ, FLWR_HOME=str(self.home), PATH=path)
        env.setdefault('OMP_NUM_THREADS', '1')
        # A SuperNode's SuperExec asks it for a task to start every second by default.
        env.setdefault('FLWR_SUPEREXEC_TASK_POLL_INTERVAL', '0.1')
        return env

    def start(self, startup_timeout: float = 60.0) -> 'LocalDeployment':
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        credentials = None if self.insecure else write_credentials(
            self.workdir / 'credentials', num_nodes=self.num_nodes)
        connection = ('insecure = true' if credentials is None else
                      f'root-certificates = "{credentials.ca_certificate}"')
        (self.home / 'config.toml').write_text(
            f'[superlink]\ndefault = "{LINK_NAME}"\n\n[superlink.{LINK_NAME}]\n'
            f'address = "127.0.0.1:{self.link_port}"\n{connection}\n')
        link_security = ['--insecure'] if credentials is None else [
            '--ssl-ca-certfile', str(credentials.ca_certificate),
            '--ssl-certfile', str(credentials.superlink_certificate),
            '--ssl-keyfile', str(credentials.superlink_key), '--enable-supernode-auth']
        self.link = self._spawn([_executable('flower-superlink'), *link_security,
                                 '--port', str(self.link_port), '--isolation', self.isolation,
                                 '--disable-runtime-dependency-installation'], 'superlink.log')
        _wait_for_port(self.link_port, startup_timeout)
        if self.isolation == 'process':
            runtime_security = ['--insecure'] if credentials is None else [
                '--root-certificates', str(credentials.ca_certificate)]
            self.link_executor = self._start_executor(self.link_port, runtime_security,
                                                      'superexec-superlink.log')
        runtime_ports = []
        for partition in range(self.num_nodes):
            if credentials is None:
                node_security = ['--insecure']
            else:
                self._register(credentials.node_public_key(partition), startup_timeout)
                node_security = ['--root-certificates', str(credentials.ca_certificate),
                                 '--auth-supernode-private-key',
                                 str(credentials.node_keys[partition])]
            counter = ByteCounter(self.link_port)
            self.counters.append(counter)
            runtime_ports.append(free_port())
            self.nodes.append(self._spawn([
                _executable('flower-supernode'), *node_security,
                '--superlink', f'127.0.0.1:{counter.port}', '--port', str(runtime_ports[-1]),
                '--isolation', self.isolation,
                '--node-config', f'partition-id={partition} num-partitions={self.num_nodes}'],
                f'supernode-{partition}.log'))
        if self.isolation == 'process':
            for partition, port in enumerate(runtime_ports):
                _wait_for_port(port, startup_timeout)
                # A SuperNode's Runtime API is plain HTTP on 127.0.0.1 in both modes.
                self.node_executors.append(self._start_executor(
                    port, ['--insecure'], f'superexec-{partition}.log'))
        return self

    def _start_executor(self, runtime_port: int, security: List[str],
                        log_name: str) -> subprocess.Popen:
        """``flower-superexec`` on the Runtime API at ``127.0.0.1:runtime_port``: it asks for
        a task every ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` seconds and starts each one as a
        ``flwr-clientapp`` or ``flwr-serverapp`` child in its process group, so stopping the
        SuperExec stops the app it is running."""
        return self._spawn([_executable('flower-superexec'), *security,
                            '--runtime-api-address', f'127.0.0.1:{runtime_port}'], log_name)

    def _register(self, public_key: Path, timeout: float) -> None:
        """``flwr supernode register``: the SuperLink will serve the holder of this key."""
        result = subprocess.run([_executable('flwr'), 'supernode', 'register', str(public_key),
                                 LINK_NAME], capture_output=True, text=True, env=self._env(),
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f'could not register {public_key} with the SuperLink: '
                               f'{result.stdout}{result.stderr}')

    def submit(self, app: Path) -> subprocess.Popen:
        """``flwr run APP`` on this deployment's SuperLink, streaming the run's logs."""
        log = open(self.logs / 'run.log', 'w')
        return subprocess.Popen([_executable('flwr'), 'run', str(app), LINK_NAME, '--stream'],
                                stdout=log, stderr=subprocess.STDOUT, env=self._env())

    def kill_node(self, partition: int) -> None:
        """Kills SuperNode ``partition`` and its ClientApp at once (SIGKILL, no goodbye), with
        the node's SuperExec where the deployment started it."""
        processes = [self.nodes[partition]]
        if self.node_executors:
            processes.append(self.node_executors[partition])
        for process in processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        processes = [*self.node_executors, self.link_executor, *self.nodes, self.link]
        for process in processes:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            if process is not None:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        for counter in self.counters:
            counter.close()

    def __enter__(self) -> 'LocalDeployment':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f'nothing listens on 127.0.0.1:{port} after {timeout:.0f} s')


def _rounds_done(metrics_path: Path) -> int:
    try:
        return len(read_json(metrics_path)['rounds'])
    except (OSError, ValueError, KeyError):
        return 0


def deploy(config: TrainConfig, num_nodes: int, workdir: Path, timeout: float = 60.0,
           kill_after_round: Optional[int] = None, kill_partition: int = 0,
           run_timeout: Optional[float] = None, insecure: bool = False,
           isolation: str = 'subprocess') -> Dict:
    """Runs ``config`` on a :class:`LocalDeployment` of ``num_nodes`` SuperNodes.

    Args:
        timeout: seconds the server waits for a round's replies.
        insecure: without TLS and node authentication.
        isolation: Flower's isolation mode, ``'subprocess'`` or ``'process'``
            (:class:`LocalDeployment`).
        kill_after_round: kill SuperNode ``kill_partition`` as soon as this many rounds are
            done (a fault in the middle of the run).
        run_timeout: seconds the whole run may take (``None``: no limit).

    Returns:
        ``{'metrics': metrics.json, 'wire': [{'up', 'down'} per node, over the run],
        'idle': the same over the seconds before the run, 'idle_seconds', 'seconds'}``.
    """
    workdir = Path(workdir).resolve()
    out = workdir / 'run'
    app = workdir / 'app'
    write_app(app, config, out=str(out), timeout=timeout, **{'min-nodes': num_nodes})
    with LocalDeployment(workdir, num_nodes, insecure, isolation) as deployment:
        idle_began = time.monotonic()
        time.sleep(5)  # the SuperNodes connect and poll: what an idle node costs
        idle = [counter.snapshot() for counter in deployment.counters]
        idle_seconds = time.monotonic() - idle_began
        began = time.monotonic()
        run = deployment.submit(app)
        killed = kill_after_round is None
        while run.poll() is None:
            if run_timeout is not None and time.monotonic() - began > run_timeout:
                run.kill()
                raise TimeoutError(f'the run took over {run_timeout:.0f} s; logs in {workdir}')
            if not killed and _rounds_done(out / 'metrics.json') >= kill_after_round:
                deployment.kill_node(kill_partition)
                killed = True
            time.sleep(0.2)
        seconds = time.monotonic() - began
        wire = [{key: counter.snapshot()[key] - before[key] for key in ('up', 'down')}
                for counter, before in zip(deployment.counters, idle)]
    if not (out / 'metrics.json').exists() or _rounds_done(out / 'metrics.json') < config.rounds:
        raise RuntimeError(f'the run did not finish; logs in {workdir / "logs"}')
    return {'metrics': load_metrics(out), 'wire': wire,
            'idle': idle, 'idle_seconds': idle_seconds, 'seconds': seconds}
