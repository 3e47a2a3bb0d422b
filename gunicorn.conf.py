"""gunicorn settings for `gunicorn -c gunicorn.conf.py server:app`.

Environment: MODELS_LIST (models list file), ZEROTH_BIND (0.0.0.0:8000), ZEROTH_WORKERS (2),
ZEROTH_THREADS (2 per worker), ZEROTH_TIMEOUT (60 s), ZEROTH_LOG_LEVEL (info),
PROMETHEUS_MULTIPROC_DIR (a fresh temporary folder unless set).
"""

import gc
import logging
import os
import shutil
import tempfile

# One thread per worker process: workers are the parallelism. Must be set before torch is
# imported; torch's default of one thread per core oversubscribes the machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# The Rust tokenizer's thread pool does not survive fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Workers write their metrics here and /metrics merges them. prometheus_client reads the
# variable at import time, so it must be set before server.py is loaded (preload below).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="zeroth-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
os.makedirs(_metrics_dir, exist_ok=True)
for _name in os.listdir(_metrics_dir):  # samples of a previous run would be summed in
    if _name.endswith(".db"):
        os.remove(os.path.join(_metrics_dir, _name))

import torch  # noqa: E402

# With preload, the master runs torch ops (folding the table) before forking; unless torch is
# single-threaded by then, its thread pool's locks are copied held and the workers deadlock.
torch.set_num_threads(1)

logging.basicConfig(
    level=os.environ.get("ZEROTH_LOG_LEVEL", "info").upper(),
    format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
)

bind = os.environ.get("ZEROTH_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("ZEROTH_WORKERS", "2"))
# gthread keeps client connections alive between requests; a sync worker closes each one.
worker_class = "gthread"
threads = int(os.environ.get("ZEROTH_THREADS", "2"))
# Load the models once in the master so the workers share the table's pages copy-on-write.
preload_app = True
timeout = int(os.environ.get("ZEROTH_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5
# gunicorn 27 opens ~/.gunicorn/gunicorn.ctl by default; two servers on one host collide.
control_socket_disable = True
loglevel = os.environ.get("ZEROTH_LOG_LEVEL", "info")
accesslog = os.environ.get("ZEROTH_ACCESS_LOG") or None


def when_ready(server):
    # Everything loaded so far is long-lived: keep the garbage collector from touching (and so
    # copying) those pages in the workers.
    gc.collect()
    gc.freeze()


def post_fork(server, worker):
    # After fork torch rebuilds its thread pool lazily, on each thread's first op; two gthread
    # handler threads doing that at once race ("Invalid thread pool!", a 500 on about 1 server
    # start in 3). Rebuilding it here, before the handler threads exist, avoids the race.
    torch.set_num_threads(1)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir.startswith(tempfile.gettempdir()) and "zeroth-metrics-" in _metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
