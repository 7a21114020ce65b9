#!/usr/bin/env bash
# tools/smoke-test-images.sh
#
# Proves the locally built test images (tools/build-test-images.sh) work on the
# real engine, on a throwaway docker network; always cleans up (containers,
# volume, network), also on failure/interrupt. Exit 0 = all green.
#   postgres : starts, pg_isready, psql with password over the network,
#              a table survives a container restart on the same volume
#   redis    : --requirepass/--appendonly/--dir; PING from another container
#   mlflow   : mlflow server on the postgres backend answers /health
#   ray      : head + worker container -> 2 alive nodes
#   marimo   : marimo --version
set -uo pipefail

RAY_IMG="${RAY_IMG:-cslr-test/ray:2.60.0}"
MLFLOW_IMG="${MLFLOW_IMG:-cslr-test/mlflow:3.17.2}"
MARIMO_IMG="${MARIMO_IMG:-cslr-test/marimo:0.25.2}"
PG_IMG="${PG_IMG:-cslr-test/postgres:15}"
REDIS_IMG="${REDIS_IMG:-cslr-test/redis:7}"

ID="cslr-smoke-$$"
NET="$ID-net"
PGVOL="$ID-pgdata"
PGPASS="smoke-$$-pw"
REDISPASS="redis-$$-pw"
PASS=0
FAIL=0
CONTAINERS=()

log() { echo "[smoke $(date +%H:%M:%S)] $*" >&2; }
ok() { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }

cleanup() {
  local c
  for c in "${CONTAINERS[@]}"; do
    docker rm -f -v "$c" >/dev/null 2>&1 || true
  done
  docker volume rm -f "$PGVOL" >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

run_d() {  # run_d NAME [docker run args...]
  local name="$1"; shift
  CONTAINERS+=("$name")
  docker run -d --name "$name" --network "$NET" "$@" >/dev/null
}
dump() { echo "---- logs of $1 (tail) ----" >&2; docker logs --tail 40 "$1" >&2 2>&1 || true; }
retry() {  # retry SECONDS CMD... : run CMD about every second until it succeeds
  local end=$((SECONDS + $1)); shift
  while [ $SECONDS -lt $end ]; do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}
running() { [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
retry_while_running() {  # retry_while_running CONTAINER SECONDS CMD... : like retry, gives up when CONTAINER exits
  local c="$1" end=$((SECONDS + $2)); shift 2
  while [ $SECONDS -lt $end ]; do
    "$@" >/dev/null 2>&1 && return 0
    running "$c" || { log "$c exited"; return 1; }
    sleep 1
  done
  return 1
}

docker info >/dev/null 2>&1 || { echo "docker engine not answering (tools/docker-engine.sh)"; exit 1; }
for img in "$RAY_IMG" "$MLFLOW_IMG" "$MARIMO_IMG" "$PG_IMG" "$REDIS_IMG"; do
  docker image inspect "$img" >/dev/null 2>&1 || { echo "missing image $img (tools/build-test-images.sh)"; exit 1; }
done
docker network create "$NET" >/dev/null
docker volume create "$PGVOL" >/dev/null
T0=$SECONDS

# ---------------------------------------------------------------- postgres
PG="$ID-pg"
log "postgres: start"
run_d "$PG" -e POSTGRES_USER=cslr -e POSTGRES_PASSWORD="$PGPASS" -e POSTGRES_DB=mlflow \
  -v "$PGVOL:/var/lib/postgresql/data" "$PG_IMG"
pg_ready() { docker exec "$PG" pg_isready -h 127.0.0.1 -U cslr -d mlflow; }
# pg_isready over TCP answers only after init is complete (the temp server listens on no TCP address)
if retry_while_running "$PG" 90 pg_ready; then ok "postgres: pg_isready"; else bad "postgres: pg_isready"; dump "$PG"; fi
# psql with the password, over the docker network, from another container
psql_net() {
  docker run --rm --network "$NET" -e PGPASSWORD="$1" "$PG_IMG" \
    psql -h "$PG" -U cslr -d mlflow -v ON_ERROR_STOP=1 -tAc "$2"
}
out="$(psql_net "$PGPASS" "CREATE TABLE smoke(x int); INSERT INTO smoke VALUES (42); SELECT x FROM smoke;" 2>&1)"
if [ "$out" = "42" ] || [ "$(echo "$out" | tail -n1)" = "42" ]; then ok "postgres: psql with password over the network"
else bad "postgres: psql with password over the network: $out"; dump "$PG"; fi
if psql_net "wrong-password" "SELECT 1" >/dev/null 2>&1; then bad "postgres: wrong password accepted"
else ok "postgres: wrong password rejected (scram-sha-256)"; fi
method="$(docker exec "$PG" sh -c 'grep -E "^host +all +all +all" "$PGDATA/pg_hba.conf"' 2>&1)"
[[ "$method" == *scram-sha-256* ]] && ok "postgres: pg_hba host auth = scram-sha-256" || bad "postgres: pg_hba: $method"
user="$(docker exec "$PG" sh -c 'stat -c %U /proc/1' 2>&1)"
[ "$user" = postgres ] && ok "postgres: server runs as postgres (PID 1, exec'd)" || bad "postgres: PID 1 user: $user"
t=$SECONDS
docker restart "$PG" >/dev/null
log "postgres: restarted in $((SECONDS - t))s (STOPSIGNAL SIGINT)"
if retry_while_running "$PG" 60 pg_ready; then
  out="$(psql_net "$PGPASS" "SELECT x FROM smoke" 2>&1)"
  [ "$out" = "42" ] && ok "postgres: table survives restart" || bad "postgres: after restart: $out"
  docker logs "$PG" 2>&1 | grep -q "Skipping initialization" && ok "postgres: no re-init on populated PGDATA" \
    || bad "postgres: no 'Skipping initialization' after restart"
else
  bad "postgres: not ready after restart"; dump "$PG"
fi
# missing password must fail like the official image
if docker run --rm "$PG_IMG" >/dev/null 2>&1; then bad "postgres: started without POSTGRES_PASSWORD"
else ok "postgres: refuses to init without POSTGRES_PASSWORD"; fi

# ---------------------------------------------------------------- redis
RD="$ID-redis"
log "redis: start"
run_d "$RD" "$REDIS_IMG" redis-server --requirepass "$REDISPASS" --appendonly yes --dir /data
redis_ping() { docker run --rm --network "$NET" "$REDIS_IMG" redis-cli -h "$RD" -a "$REDISPASS" --no-auth-warning PING; }
if retry_while_running "$RD" 30 redis_ping && [ "$(redis_ping 2>&1)" = "PONG" ]; then ok "redis: PING with password from another container"
else bad "redis: PING: $(redis_ping 2>&1)"; dump "$RD"; fi
out="$(docker run --rm --network "$NET" "$REDIS_IMG" redis-cli -h "$RD" PING 2>&1)"
[[ "$out" == *NOAUTH* ]] && ok "redis: unauthenticated PING refused" || bad "redis: unauthenticated: $out"
out="$(docker run --rm --network "$NET" "$REDIS_IMG" redis-cli -h "$RD" -a "$REDISPASS" --no-auth-warning CONFIG GET appendonly 2>&1 | tr '\n' ' ')"
[[ "$out" == "appendonly yes"* ]] && ok "redis: appendonly yes" || bad "redis: appendonly: $out"
user="$(docker exec "$RD" stat -c %U /proc/1 2>&1)"
[ "$user" = redis ] && ok "redis: server runs as redis" || bad "redis: PID 1 user: $user"
out="$(docker exec "$RD" ls /data 2>&1 | tr '\n' ' ')"
[[ "$out" == *appendonly* ]] && ok "redis: AOF in /data ($out)" || bad "redis: /data: $out"
# python client from the ray image
out="$(docker run --rm --network "$NET" "$RAY_IMG" python -c "import redis; r=redis.Redis(host='$RD', password='$REDISPASS'); r.set('k','v'); print(r.get('k').decode())" 2>&1)"
[ "$out" = "v" ] && ok "redis: python client from the ray image" || bad "redis: python client: $out"

# ---------------------------------------------------------------- mlflow
ML="$ID-mlflow"
log "mlflow: start"
run_d "$ML" --init "$MLFLOW_IMG" mlflow server \
  --backend-store-uri "postgresql://cslr:$PGPASS@$PG:5432/mlflow" \
  --serve-artifacts --artifacts-destination /mlflow/artifacts \
  --host 0.0.0.0 --port 5000 --allowed-hosts '*'
# curl inside the mlflow container, via its name on the docker network
ml_health() { docker exec "$ML" curl -fsS --max-time 5 "http://$ML:5000/health"; }
if retry_while_running "$ML" 180 ml_health; then ok "mlflow: /health -> $(ml_health 2>&1)"
else bad "mlflow: /health"; dump "$ML"; fi
# a real tracking call through the server (run + metric + artifact upload)
out="$(docker run --rm --network "$NET" -e MLFLOW_TRACKING_URI="http://$ML:5000" "$RAY_IMG" python -c "
import mlflow, tempfile, os
mlflow.set_experiment('smoke')
with mlflow.start_run() as r:
    mlflow.log_metric('m', 1.5)
    p = os.path.join(tempfile.mkdtemp(), 'a.txt'); open(p, 'w').write('hi')
    mlflow.log_artifact(p)
print(mlflow.get_run(r.info.run_id).data.metrics['m'], sorted(a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id)))
" 2>&1 | tail -n1)"
[ "$out" = "1.5 ['a.txt']" ] && ok "mlflow: log metric + artifact via server" || { bad "mlflow: client: $out"; dump "$ML"; }

# ---------------------------------------------------------------- ray
HEAD="$ID-rayhead"
WORKER="$ID-rayworker"
log "ray: start head + worker"
run_d "$HEAD" --init --shm-size=1g "$RAY_IMG" \
  ray start --head --block --port=6379 --num-cpus=1 --dashboard-host=0.0.0.0 --disable-usage-stats
ray_nodes() {  # prints the number of alive nodes
  docker exec "$HEAD" python -c "
import ray
ray.init(address='auto', logging_level='ERROR', log_to_driver=False)
print(sum(1 for n in ray.nodes() if n['Alive']))
" 2>/dev/null | tail -n1
}
if retry_while_running "$HEAD" 120 sh -c "[ \"\$(docker exec $HEAD ray status 2>/dev/null | grep -c 'node_')\" -ge 1 ]"; then
  run_d "$WORKER" --init --shm-size=1g "$RAY_IMG" \
    ray start --address="$HEAD:6379" --block --num-cpus=1 --disable-usage-stats
  n=0; end=$((SECONDS + 180))
  while [ $SECONDS -lt $end ]; do
    n="$(ray_nodes)"; [ "${n:-0}" = 2 ] && break
    running "$WORKER" || { log "ray worker exited"; break; }
    sleep 2
  done
  if [ "${n:-0}" = 2 ]; then ok "ray: 2 alive nodes"
  else bad "ray: alive nodes = ${n:-?}"; dump "$HEAD"; dump "$WORKER"; fi
  out="$(docker exec "$HEAD" ray list nodes 2>&1 | grep -c ALIVE)"
  [ "$out" = 2 ] && ok "ray list nodes: 2 ALIVE" || bad "ray list nodes: $out ALIVE"
  # a task scheduled on the worker
  out="$(docker exec "$HEAD" python -c "
import ray, socket
ray.init(address='auto', logging_level='ERROR')
@ray.remote(num_cpus=1)
def h(): import time; time.sleep(0.5); return socket.gethostname()
print(len(set(ray.get([h.remote() for _ in range(8)]))))
" 2>&1 | tail -n1)"
  [ "$out" = 2 ] && ok "ray: tasks ran on both nodes" || bad "ray: tasks hosts: $out"
else
  bad "ray: head did not come up"; dump "$HEAD"
fi

# ---------------------------------------------------------------- marimo + misc
out="$(docker run --rm "$MARIMO_IMG" marimo --version 2>&1 | tail -n1)"
[ -n "$out" ] && [[ "$out" =~ ^[0-9] ]] && ok "marimo --version: $out" || bad "marimo --version: $out"
out="$(docker run --rm "$RAY_IMG" sh -c 'python --version && pip --version >/dev/null && touch /tmp/x && echo tmp-ok && uname -m' 2>&1 | tr '\n' ' ')"
[[ "$out" == *tmp-ok*x86_64* ]] && ok "ray image: python/pip/tmp/arch: $out" || bad "ray image misc: $out"
vers="$(docker run --rm "$RAY_IMG" python -c 'import ray, mlflow, marimo, psycopg2, redis, requests; print("ray", ray.__version__, "mlflow", mlflow.__version__, "marimo", marimo.__version__, "psycopg2", psycopg2.__version__.split()[0], "redis", redis.__version__, "requests", requests.__version__)' 2>&1)"
log "versions: $vers"

log "done in $((SECONDS - T0))s"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
