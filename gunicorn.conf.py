"""gunicorn settings for `gunicorn -c gunicorn.conf.py server:app`.

Settings come from the environment through zeroth.settings.Settings (the README's table);
this file turns them into gunicorn's and sets the variables libraries read for themselves.

Reload: `kill -HUP <master>` (or POST /admin/reload). gunicorn re-reads this file, on_reload
below loads the models list into a new registry in the master, and gunicorn then forks new
workers from it and stops the old ones gracefully (they finish their requests). gunicorn's
own HUP alone would not do it: with preload_app the app is never imported again.
"""

import gc
import logging
import os
import shutil
import tempfile

from zeroth.models_list import ConfigError
from zeroth.settings import Settings

try:
    settings = Settings.from_env()
except ConfigError as exc:
    raise SystemExit(f"zeroth: {exc}") from None

# One thread per worker process: workers are the parallelism. Must be set before torch is
# imported; torch's default of one thread per core oversubscribes the machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# The Rust tokenizer's thread pool does not survive fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Workers write their metrics here and /metrics merges them. prometheus_client reads the
# variable at import time, so it must be set before server.py is loaded (preload below).
if settings.metrics_dir is None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="zeroth-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
os.makedirs(_metrics_dir, exist_ok=True)
# SIGHUP runs this file again in the same master: the live workers' samples must stay.
if os.environ.get("ZEROTH_CONF_PID") != str(os.getpid()):
    os.environ["ZEROTH_CONF_PID"] = str(os.getpid())
    for _name in os.listdir(_metrics_dir):  # samples of a previous run would be summed in
        if _name.endswith(".db"):
            os.remove(os.path.join(_metrics_dir, _name))

import torch  # noqa: E402

# Maps the drain flag here, in the master, so that every worker forked later shares it.
from zeroth import drain  # noqa: E402

# With preload, the master runs torch ops (folding the table) before forking; unless torch is
# single-threaded by then, its thread pool's locks are copied held and the workers deadlock.
torch.set_num_threads(1)

logging.basicConfig(
    level=settings.log_level.upper(),
    format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
)

bind = settings.bind
workers = settings.workers
# One handler thread: the work is CPU-bound Python, so a second thread in the same process
# only adds GIL hand-offs (measured: ~15% more CPU per request). Idle keep-alive connections
# wait in the worker's poller, not in a thread, so they do not need more.
threads = settings.threads
# Both keep client connections alive between requests (a sync worker closes each one). With one
# thread, zeroth/gunicorn_worker.py answers in the poller's loop and saves gthread's hand-off.
worker_class = "zeroth.gunicorn_worker.InlineWorker" if threads == 1 else "gthread"
# Load the models once in the master so the workers share the table's pages copy-on-write.
preload_app = True
timeout = settings.timeout
# SIGTERM (and a reload) lets a worker finish the requests it has for this long.
graceful_timeout = settings.graceful_timeout
keepalive = 5
# gunicorn 27 opens ~/.gunicorn/gunicorn.ctl by default; two servers on one host collide.
control_socket_disable = True
loglevel = settings.log_level
accesslog = settings.access_log


def when_ready(server):
    # Everything loaded so far is long-lived: keep the garbage collector from touching (and so
    # copying) those pages in the workers.
    gc.collect()
    gc.freeze()
    drain.install(server, settings.drain_seconds)


def post_fork(server, worker):
    # After fork torch rebuilds its thread pool lazily, on each thread's first op; two gthread
    # handler threads doing that at once race ("Invalid thread pool!", a 500 on about 1 server
    # start in 3). Rebuilding it here, before the handler threads exist, avoids the race.
    torch.set_num_threads(1)
    # POST /admin/reload in one worker reaches all of them through the master's SIGHUP. (The
    # bench's seed server is run with this file too, being in the same folder: no state there.)
    state = server.app.wsgi().extensions.get("zeroth")
    if state is not None:
        state.reloader.master_pid = server.pid


def on_reload(server):
    # Runs in the master on SIGHUP, before gunicorn forks the new workers.
    from zeroth.api.state import state_of

    try:
        state_of(server.app.wsgi()).reloader.reload()
    except Exception as exc:  # the old registry stays; the new workers fork from it
        server.log.error("reload failed, still serving the previous models: %s", exc)
    gc.collect()
    gc.freeze()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir.startswith(tempfile.gettempdir()) and "zeroth-metrics-" in _metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
