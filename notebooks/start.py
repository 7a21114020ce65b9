import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell
def _():
    import os
    import socket
    from pathlib import Path

    import marimo as mo

    mo.md(r"""
    # Start here

    This notebook runs in the stack's Marimo container and talks to the Ray cluster through
    the health service's client proxy (`RAY_ADDRESS`, set in the container: it follows
    whichever node is head). It shows the cluster, runs a task on every node, logs a run to
    MLflow and reads your data from `/data`.
    """)
    return Path, mo, os, socket


@app.cell
def _(os):
    import time

    import ray

    address = os.environ.get("RAY_ADDRESS", "ray://health:10001")
    if not ray.is_initialized():
        # Token auth: RAY_AUTH_TOKEN comes from .env through the container's environment.
        # The head's client server may be starting, or the head may just have failed over:
        # Ray then refuses the session and a new attempt succeeds.
        for attempt in range(5):
            try:
                ray.init(address=address, logging_level="ERROR")
                break
            except ConnectionError:
                if attempt == 4:
                    raise
                time.sleep(3)
    return address, ray


@app.cell
def _(address, mo, ray):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    rows = [
        {
            "node": n["NodeManagerHostname"],
            "address": n["NodeManagerAddress"],
            "CPUs": n["Resources"].get("CPU", 0),
            "GPUs": n["Resources"].get("GPU", 0),
            "memory (GiB)": round(n["Resources"].get("memory", 0) / 2**30, 1),
        }
        for n in nodes
    ]
    total_gpus = sum(r["GPUs"] for r in rows)
    mo.vstack(
        [
            mo.md(f"## The cluster\n\nConnected to `{address}`: **{len(rows)} alive node(s)**, **{total_gpus:g} GPU(s)**."),
            mo.ui.table(rows, selection=None),
        ]
    )
    return (nodes,)


@app.cell
def _(mo, nodes, ray, socket):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0.1)
    def where_am_i(x):
        import os as _os

        return {"node": socket.gethostname(), "pid": _os.getpid(), "square": x * x}

    refs = [where_am_i.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(i) for i, n in enumerate(nodes)]
    results = ray.get(refs, timeout=120)
    mo.vstack([mo.md(f"## A task on every node\n\n{len(results)} task(s) ran:"), mo.ui.table(results, selection=None)])
    return (results,)


@app.cell
def _(mo, nodes, os, results):
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking:
        run_note = mo.md("## MLflow\n\nMLflow is off in this stack (`services.mlflow.enabled: false`): nothing logged.")
    else:
        import mlflow

        mlflow.set_tracking_uri(tracking)
        mlflow.set_experiment("starter-notebook")
        with mlflow.start_run(run_name="start.py", log_system_metrics=True) as run:  # CPU, memory (GPU with nvidia-ml-py)
            mlflow.log_param("nodes", len(nodes))
            mlflow.log_metric("tasks_ran", len(results))
        run_note = mo.md(
            f"## MLflow\n\nLogged run `{run.info.run_id}` to the experiment **starter-notebook** at `{tracking}` "
            "(on the host: the MLflow URL that `inv up` printed)."
        )
    run_note
    return


@app.cell
def _(Path, mo):
    data_root = Path("/data")
    sets = sorted(p for p in data_root.iterdir() if p.is_dir()) if data_root.is_dir() else []
    if not sets:
        data_note = mo.md(
            "## Data\n\nNo data folder is configured. Add one to `config.yaml` and run `inv up` again:\n\n"
            "```yaml\ndata:\n  phoenix: /srv/datasets/phoenix-2014t   # read-only at /data/phoenix\n```"
        )
    else:
        lines = []
        for folder in sets:
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            line = f"- `/data/{folder.name}`: {len(files)} file(s)"
            if files:
                first = files[0]
                with first.open("rb") as handle:
                    head = handle.read(200).decode("utf-8", errors="replace").splitlines()[:1]
                line += f"; first: `{first.relative_to(folder)}` ({first.stat().st_size} bytes), starts with `{head[0] if head else ''}`"
            lines.append(line)
        data_note = mo.md("## Data\n\nRead-only data sets, the same on every node and in every job:\n\n" + "\n".join(lines))
    data_note
    return


@app.cell
def _(mo):
    mo.md(r"""
    ## Next

    Submit the CSLR example as a Ray job from the host (README, "First experiment"):

    ```bash
    .venv/bin/inv submit --wait --working-dir examples/cslr -- python train.py
    ```
    """)
    return


@app.cell
def _(data_note, mo, ray, results, run_note):
    # Runs last (it reads every section's result). Run as a script (`python start.py`), the
    # notebook closes its Ray client connection so the process ends.
    if mo.app_meta().mode != "edit":  # `marimo export` reports "edit" too
        ray.shutdown()
    return


if __name__ == "__main__":
    app.run()
