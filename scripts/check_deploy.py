#!/usr/bin/python3
"""The checks of scripts/check-deploy that read files rather than run tools:
the docker-compose settings, the package lists of install-deps, the
Dockerfile and the puppet module, the worker binary's shared libraries, and
the files the puppet catalogue would write.

    scripts/check_deploy.py TMP BINARY

TMP is the folder where scripts/check-deploy left its work: compose.yml and
compose-example.yml (`docker-compose config` without and with .env.example)
and the puppet state folders p-supervisord and p-systemd (the compiled
catalogues). BINARY is the worker binary to check. Run from the repository
root with Debian's python3 and python3-yaml (scripts/install-deps).
Prints one "ok" line per group of checks and every failure; exits 1 on any.
"""
import glob
import json
import os
import re
import subprocess
import sys
import tomllib

import yaml

UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


class Report:
    """Collects failures; prints "ok" lines and warnings as they come."""

    def __init__(self):
        self.failures = []

    def fail(self, msg):
        self.failures.append(msg)

    @staticmethod
    def ok(msg):
        print(f"check-deploy: ok: {msg}", file=sys.stderr)

    @staticmethod
    def warn(msg):
        print(f"check-deploy: WARNING: {msg}", file=sys.stderr)


def seconds(text):
    """A humantime-style duration ("30s", "1h30m", "500ms") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d)", str(text))
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d)|\s", "", str(text)):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * UNITS[u] for n, u in parts)


def read(path):
    with open(path) as f:
        return f.read()


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


# --- docker-compose.yml -------------------------------------------------------

def check_compose(report, tmp, defaults):
    """The worker can be scaled, starts after healthy services, gets every
    .env.example setting and more stop time than its drain; RabbitMQ's
    consumer timeout is above the job timeout."""
    fail = report.fail
    compose = load_yaml(f"{tmp}/compose.yml")
    services = compose.get("services", {})
    for name in ("rabbitmq", "minio", "createbucket", "worker"):
        if name not in services:
            fail(f"docker-compose.yml: no {name} service")
    worker = services.get("worker", {})
    if "container_name" in worker or worker.get("ports"):
        fail("docker-compose.yml: the worker has a container_name or published ports: --scale would break")
    if "build" not in worker:
        fail("docker-compose.yml: the worker is not built from the Dockerfile")
    deps = worker.get("depends_on", {})
    for svc, condition in (("rabbitmq", "service_healthy"), ("minio", "service_healthy"),
                           ("createbucket", "service_completed_successfully")):
        if not isinstance(deps, dict) or deps.get(svc, {}).get("condition") != condition:
            fail(f"docker-compose.yml: the worker must depend on {svc} with condition {condition}")
        if condition == "service_healthy" and "healthcheck" not in services.get(svc, {}):
            fail(f"docker-compose.yml: {svc} has no healthcheck")
    if "management" not in services.get("rabbitmq", {}).get("image", ""):
        fail("docker-compose.yml: RabbitMQ without the management UI image")
    env = worker.get("environment", {}) or {}
    drain = seconds(env.get("TRANSCODE_WORKER__DRAIN_TIMEOUT") or defaults["worker"]["drain_timeout"])
    grace = seconds(worker.get("stop_grace_period", "10s"))
    if grace <= drain:
        fail(f"docker-compose.yml: stop_grace_period ({grace:g}s) must be above the drain timeout ({drain:g}s)")
    job_timeout = seconds(env.get("TRANSCODE_WORKER__JOB_TIMEOUT") or defaults["worker"]["job_timeout"])
    m = re.search(r"^\s*consumer_timeout\s*=\s*(\d+)\s*$", read("config/rabbitmq.conf"), re.M)
    if not m:
        fail("config/rabbitmq.conf: no consumer_timeout")
    elif int(m.group(1)) / 1000 <= job_timeout:
        fail(f"config/rabbitmq.conf: consumer_timeout ({int(m.group(1)) / 1000:g}s) "
             f"must be above job_timeout ({job_timeout:g}s)")
    if not any("rabbitmq.conf" in str(v) for v in services.get("rabbitmq", {}).get("volumes", [])):
        fail("docker-compose.yml: config/rabbitmq.conf is not mounted into RabbitMQ")
    m = re.search(r"^\s*load_definitions\s*=\s*(\S+)\s*$", read("config/rabbitmq.conf"), re.M)
    mounts = [str(v).split(":") for v in services.get("rabbitmq", {}).get("volumes", [])]
    if not m:
        fail("config/rabbitmq.conf: no load_definitions (the farm's queues would not exist before a worker runs)")
    elif not any(len(v) >= 2 and v[0].rstrip("/").endswith("config/rabbitmq-definitions")
                 and v[1].rstrip("/") == m.group(1).rstrip("/") for v in mounts):
        fail(f"docker-compose.yml: config/rabbitmq-definitions is not mounted at {m.group(1)}, "
             "where config/rabbitmq.conf loads definitions from")
    example_names = re.findall(r"^([A-Z][A-Z0-9_]*)=", read(".env.example"), re.M)
    missing = [n for n in example_names if n not in env]
    if missing:
        fail("docker-compose.yml: the worker's environment lacks these .env.example settings "
             f"(add them, as `NAME:` to pass them through): {', '.join(missing)}")
    report.ok(f"docker-compose.yml: scalable worker, health-gated start, stop_grace_period {grace:g}s > "
              f"drain {drain:g}s, consumer_timeout > job_timeout {job_timeout:g}s, definitions loaded at start, "
              f"{len(example_names)} .env.example settings passed")

    check_upload_events(report, services, env, defaults)

    # With .env.example as the .env (what a new user copies): warn when it
    # cannot work inside compose.
    example = load_yaml(f"{tmp}/compose-example.yml")["services"]
    wenv = example["worker"].get("environment", {}) or {}
    for var in ("AMQP_URL", "AWS_S3_ENDPOINT_URL"):
        host = re.sub(r"^[a-z]+://(?:[^@/]*@)?([^:/?]+).*$", r"\1", str(wenv.get(var, "")))
        if host and host not in example:
            report.warn(f".env.example's {var} points at {host!r}, not a compose service: "
                        f"copied as .env, the workers cannot reach it in docker compose")
    bucket = str(wenv.get("S3_BUCKET_NAME", ""))
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        report.warn(f".env.example's S3_BUCKET_NAME {bucket!r} is not a valid bucket name: "
                    "MinIO refuses to create it")
    if len(str(example["minio"]["environment"].get("MINIO_ROOT_PASSWORD", ""))) < 8:
        report.warn(".env.example's AWS_SECRET_ACCESS_KEY is shorter than 8 characters: MinIO will not start")


def check_upload_events(report, services, env, defaults):
    """MinIO sends the bucket's uploads to the farm's uploads exchange (as
    a durable fanout exchange, the way the farm declares it), through the
    notification target that createbucket's `mc event add` names; the
    optional ingest service gets the workers' settings and a rules file."""
    fail = report.fail
    failed_before = len(report.failures)
    minio = services.get("minio", {}).get("environment", {}) or {}
    targets = {k[len("MINIO_NOTIFY_AMQP_ENABLE_"):] for k, v in minio.items()
               if k.startswith("MINIO_NOTIFY_AMQP_ENABLE_") and str(v) == "on"}
    command = " ".join(services.get("createbucket", {}).get("command", []) or [])
    arns = re.findall(r"mc event add .*?arn:minio:sqs::([^:\s]+):amqp", command)
    if not arns:
        fail("docker-compose.yml: createbucket does not send the bucket's events anywhere (mc event add ... arn:minio:sqs::ID:amqp)")
    for target in arns:
        if target not in targets:
            fail(f"docker-compose.yml: createbucket's mc event add names the AMQP target {target}, "
                 f"which MinIO does not enable (MINIO_NOTIFY_AMQP_ENABLE_{target})")
            continue
        get = lambda key: str(minio.get(f"MINIO_NOTIFY_AMQP_{key}_{target}", ""))
        exchange = env.get("TRANSCODE_BROKER__UPLOADS_EXCHANGE") or defaults["broker"]["uploads_exchange"]
        if get("EXCHANGE") != exchange:
            fail(f"docker-compose.yml: MinIO's target {target} publishes to the exchange {get('EXCHANGE')!r}, "
                 f"not the farm's uploads exchange {exchange!r}")
        if get("EXCHANGE_TYPE") != "fanout" or get("DURABLE") != "on":
            fail(f"docker-compose.yml: MinIO's target {target} must declare the uploads exchange as the farm "
                 "does: EXCHANGE_TYPE fanout, DURABLE on")
        if get("DELIVERY_MODE") != "2":
            fail(f"docker-compose.yml: MinIO's target {target} must publish persistent events (DELIVERY_MODE 2)")
    ingest = services.get("ingest")
    if ingest is not None:
        if ingest.get("environment") != services.get("worker", {}).get("environment"):
            fail("docker-compose.yml: the ingest service's environment is not the worker's")
        if not any("config/ingest.toml" in str(v) for v in ingest.get("volumes", [])):
            fail("docker-compose.yml: the ingest service does not mount config/ingest.toml")
    if len(report.failures) == failed_before:
        report.ok(f"docker-compose.yml: MinIO's uploads go to the uploads exchange through target(s) "
                  f"{', '.join(arns)}; the ingest service has the workers' settings")


# --- package lists ------------------------------------------------------------

def install_deps_packages():
    """The Debian packages scripts/install-deps installs."""
    body = re.search(r"^PACKAGES=\((.*?)^\)", read("scripts/install-deps"), re.M | re.S).group(1)
    return [t for line in body.splitlines() for t in line.split("#")[0].split()]


def dockerfile_stages():
    """[(FROM line, [packages apt-get installs])] per stage."""
    joined, cur = [], ""
    for line in read("Dockerfile").splitlines():
        if line.strip().startswith("#") and not cur:
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
        else:
            joined.append(cur + line)
            cur = ""
    stages = []
    for ins in joined:
        words = ins.split()
        if not words:
            continue
        if words[0].upper() == "FROM":
            stages.append((ins.strip(), []))
        elif words[0].upper() == "RUN" and stages:
            for cmd in ins.split("&&"):
                toks = cmd.split()
                if "apt-get" in toks and "install" in toks:
                    after = toks[toks.index("install") + 1:]
                    stages[-1][1].extend(t for t in after if not t.startswith("-"))
    return stages


def puppet_packages():
    """The packages of the puppet module's `$packages`."""
    text = read("puppet/modules/transcode_worker/manifests/init.pp")
    body = re.search(r"\$packages\s*=\s*\[(.*?)\]", text, re.S).group(1)
    return re.findall(r"'([^']+)'", body)


def check_package_lists(report, stages):
    """The Dockerfile's runtime stage and the puppet module install exactly
    install-deps' GStreamer runtime packages; the build stage nothing else."""
    fail = report.fail
    deps_list = install_deps_packages()
    gst_runtime = {p for p in deps_list if p.startswith("gstreamer1.0-") and p != "gstreamer1.0-tools"}
    if len(stages) < 2:
        fail("Dockerfile: expected a build stage and a runtime stage")
    else:
        runtime = set(stages[-1][1])
        if runtime != gst_runtime | {"ca-certificates"}:
            fail("Dockerfile: runtime packages differ from install-deps' GStreamer runtime packages "
                 f"+ ca-certificates: only in Dockerfile {sorted(runtime - gst_runtime - {'ca-certificates'})}, "
                 f"only in install-deps {sorted(gst_runtime - runtime)}")
        build = set(stages[0][1])
        if not build <= set(deps_list):
            fail(f"Dockerfile: build stage installs packages install-deps does not: {sorted(build - set(deps_list))}")
        gst_dev = {p for p in deps_list if p.startswith("libgstreamer") and p.endswith("-dev")}
        if not gst_dev <= build:
            fail(f"Dockerfile: build stage lacks GStreamer -dev packages: {sorted(gst_dev - build)}")
        if not stages[-1][0].split()[1].startswith("debian:"):
            fail("Dockerfile: the runtime stage is not a Debian image")
    if set(puppet_packages()) != gst_runtime:
        fail(f"puppet: transcode_worker::packages {sorted(puppet_packages())} differ from install-deps' "
             f"GStreamer runtime packages {sorted(gst_runtime)}")
    report.ok("package lists: Dockerfile runtime = puppet = install-deps GStreamer runtime "
              f"({', '.join(sorted(gst_runtime))})")


# --- the binary's shared libraries come with the runtime packages -------------

def check_libraries(report, binary, runtime_packages):
    """Every shared library `binary` links comes from a Debian package that
    the Docker runtime stage's packages bring (their dependency closure)."""
    failed_before = len(report.failures)
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = sorted({os.path.realpath(m) for m in re.findall(r"=>\s*(/\S+)", ldd)})
    owners = {}
    for lib in libs:
        candidates = {lib, lib.replace("/usr/lib/", "/lib/", 1), "/usr" + lib if lib.startswith("/lib") else lib}
        for c in candidates:
            r = subprocess.run(["dpkg", "-S", c], capture_output=True, text=True)
            if r.returncode == 0:
                owners[lib] = r.stdout.split(":")[0]
                break
        else:
            report.fail(f"{binary} links {lib}, which no Debian package provides")
    closure = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
         "--no-breaks", "--no-replaces", "--no-enhances", *sorted(set(runtime_packages))],
        capture_output=True, text=True)
    if closure.returncode != 0:
        report.fail(f"apt-cache depends failed (no package lists? scripts/install-deps fetches them): "
                    f"{closure.stderr.strip()}")
        return
    have = {l.strip() for l in closure.stdout.splitlines() if not l.startswith(" ")}
    have |= {l.split(":", 1)[1].strip() for l in closure.stdout.splitlines() if "Depends:" in l}
    lacking = sorted({p for p in owners.values() if p not in have})
    if lacking:
        report.fail(f"the Docker runtime stage lacks packages {binary} links against: {lacking}")
    elif len(report.failures) == failed_before:
        report.ok(f"{binary}: its {len(libs)} shared libraries come with the runtime packages")


# --- the files the puppet catalogue would write -------------------------------

def catalog_files(state):
    """{path: (content, mode)} of the File resources of a compiled catalogue."""
    path = glob.glob(f"{state}/var/client_data/catalog/*.json")[0]
    with open(path) as f:
        resources = json.load(f)["resources"]
    files = {}
    for r in resources:
        p = r.get("parameters", {})
        if r["type"] == "File" and "content" in p:
            files[r["title"]] = (p["content"], p.get("mode"))
    return files


def catalog_subscriptions(state):
    """{"Type[title]": [the resources it subscribes to]} of a compiled catalogue."""
    path = glob.glob(f"{state}/var/client_data/catalog/*.json")[0]
    with open(path) as f:
        resources = json.load(f)["resources"]
    subs = {}
    for r in resources:
        sub = r.get("parameters", {}).get("subscribe", [])
        subs[f"{r['type']}[{r['title']}]"] = [sub] if isinstance(sub, str) else sub
    return subs


def ini_value(text, key):
    m = re.search(rf"^{key}=(.*)$", text, re.M)
    return m.group(1) if m else None


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def check_rendered(report, tmp, binary, state, kind):
    """The files of one catalogue (`kind`: supervisord or systemd): modes,
    quoting, stop timeouts above the drain, and the worker accepts them."""
    fail = report.fail
    failed_before = len(report.failures)
    files = catalog_files(state)
    config = tomllib.loads(files["/etc/transcode-worker/config.toml"][0])
    drain = seconds(config["worker"]["drain_timeout"])
    env_text, env_mode = files["/etc/transcode-worker/environment"]
    if env_mode != "0600":
        fail(f"puppet ({kind}): environment file mode {env_mode}, not 0600")
    write(f"{tmp}/run.sh", files["/usr/local/libexec/transcode-worker-run"][0])
    if subprocess.run(["sh", "-n", f"{tmp}/run.sh"]).returncode != 0:
        fail(f"puppet ({kind}): the start script is not valid sh")
    if kind == "supervisord":
        section = files["/etc/supervisor/conf.d/transcode-worker.conf"][0]
        expect = {"numprocs": "4", "process_name": "%(program_name)s_%(process_num)02d", "stopsignal": "TERM",
                  "autorestart": "true", "killasgroup": "true", "stopasgroup": "false",
                  "command": "/usr/local/libexec/transcode-worker-run run"}
        for key, value in expect.items():
            if ini_value(section, key) != value:
                fail(f"puppet (supervisord): {key}={ini_value(section, key)}, expected {value}")
        stop = int(ini_value(section, "stopwaitsecs") or 0)
        # The test data's secret has a quote and a dollar: the file must give it back verbatim.
        write(f"{tmp}/env.sh", env_text)
        got = subprocess.run(["sh", "-c", f". '{tmp}/env.sh' && printf %s \"$AWS_SECRET_ACCESS_KEY\""],
                             capture_output=True, text=True).stdout
        if got != "it's a $ecret":
            fail(f"puppet (supervisord): environment file quoting: got {got!r}")
        if config.get("presets", {}).get("vhs", {}).get("description") != 'Digitised "VHS" tapes: deinterlaced, 720p':
            fail("puppet (supervisord): config.toml string quoting (presets.vhs.description)")
    else:
        unit = files["/etc/systemd/system/transcode-worker@.service"][0]
        for key, value in {"KillSignal": "SIGTERM", "KillMode": "mixed", "Restart": "always"}.items():
            if ini_value(unit, key) != value:
                fail(f"puppet (systemd): {key}={ini_value(unit, key)}, expected {value}")
        stop = int(ini_value(unit, "TimeoutStopSec") or 0)
    if stop <= drain:
        fail(f"puppet ({kind}): stop timeout {stop}s must be above drain_timeout {drain:g}s")
    check_commands(report, tmp, files, kind, env_text)
    check_restarts(report, catalog_subscriptions(state), kind)
    # The worker itself accepts the rendered configuration and environment.
    d = f"{tmp}/{kind}-files"
    os.makedirs(d, exist_ok=True)
    for name, path in (("config.toml", "/etc/transcode-worker/config.toml"),
                       ("environment", "/etc/transcode-worker/environment")):
        write(f"{d}/{name}", files[path][0])
    r = subprocess.run(
        ["sh", "-c", 'set -a; . "$1/environment"; set +a; exec "$2" --config "$1/config.toml" check-config',
         "sh", d, os.path.abspath(binary)],
        cwd=d, capture_output=True, text=True,
        # The directory backend wants an existing folder (the test's /mnt/videos is not one).
        env={"PATH": os.environ["PATH"], "HOME": d,
             **({"TRANSCODE_STORAGE__DIRECTORY": d} if "directory" in config.get("storage", {}) else {})})
    if r.returncode != 0:
        fail(f"puppet ({kind}): transcode-worker check-config refuses the rendered settings:\n{r.stdout}{r.stderr}")
    if len(report.failures) == failed_before:
        report.ok(f"puppet ({kind}): rendered files (stop timeout {stop}s > drain {drain:g}s, "
                  "accepted by transcode-worker check-config)")


# The test data's dashboard (puppet/tests/data/common.yaml, systemd.pp) and ingest.
DASHBOARD_TOKEN = "da$hboard 'token'"
DASHBOARD_LISTEN = {"supervisord": "0.0.0.0:3000", "systemd": "[::1]:3000"}
RULES_FILE = "/etc/transcode-worker/ingest.toml"


def check_commands(report, tmp, files, kind, env_text):
    """The dashboard and ingest of the test data: one process each, started
    by the workers' start script with their arguments; the dashboard's token
    only in the environment file (and read back verbatim from it); the rules
    file is TOML with rules."""
    fail = report.fail
    if kind == "supervisord":
        paths = {name: f"/etc/supervisor/conf.d/transcode-worker-{name}.conf" for name in ("dashboard", "ingest")}
        key = "command"
    else:
        paths = {name: f"/etc/systemd/system/transcode-worker-{name}.service" for name in ("dashboard", "ingest")}
        key = "ExecStart"
    wrapper = "/usr/local/libexec/transcode-worker-run"
    expect = {"dashboard": f"{wrapper} dashboard --listen {DASHBOARD_LISTEN[kind]}",
              "ingest": f"{wrapper} ingest --rules {RULES_FILE} --poll 30"}
    for name, path in paths.items():
        if path not in files:
            fail(f"puppet ({kind}): no {path} for {name}")
            continue
        text = files[path][0]
        if ini_value(text, key) != expect[name]:
            fail(f"puppet ({kind}): {name}: {key}={ini_value(text, key)}, expected {expect[name]}")
        if kind == "supervisord":
            for k, v in {"numprocs": None, "stopsignal": "TERM", "autorestart": "true",
                         "user": "transcode", "directory": "/var/lib/transcode-worker"}.items():
                if ini_value(text, k) != v:
                    fail(f"puppet (supervisord): {name}: {k}={ini_value(text, k)}, expected {v}")
        else:
            for k, v in {"User": "transcode", "KillSignal": "SIGTERM", "Restart": "always"}.items():
                if ini_value(text, k) != v:
                    fail(f"puppet (systemd): {name}: {k}={ini_value(text, k)}, expected {v}")
    leaks = [p for p, (content, _) in files.items()
             if p != "/etc/transcode-worker/environment" and DASHBOARD_TOKEN.split()[0] in content]
    if leaks:
        fail(f"puppet ({kind}): the dashboard's token is in {leaks}, not only in the environment file")
    write(f"{tmp}/env-{kind}.sh", env_text)
    got = subprocess.run(["sh", "-c", f". '{tmp}/env-{kind}.sh' && printf %s \"$TRANSCODE_DASHBOARD__TOKEN\""],
                         capture_output=True, text=True).stdout
    if got != DASHBOARD_TOKEN:
        fail(f"puppet ({kind}): TRANSCODE_DASHBOARD__TOKEN from the environment file: got {got!r}")
    rules, mode = files.get(RULES_FILE, ("", None))
    if mode != "0640":
        fail(f"puppet ({kind}): {RULES_FILE} mode {mode}, not 0640")
    try:
        if not tomllib.loads(rules).get("rule"):
            fail(f"puppet ({kind}): {RULES_FILE} has no [[rule]]")
    except tomllib.TOMLDecodeError as e:
        fail(f"puppet ({kind}): {RULES_FILE} is not TOML: {e}")


def check_restarts(report, subs, kind):
    """What restarts what: the workers, the dashboard and ingest follow the
    binary, the configuration, the environment file and the start script;
    only ingest follows its rules file."""
    shared = {"File[/usr/local/bin/transcode-worker]", "File[/etc/transcode-worker/config.toml]",
              "File[/etc/transcode-worker/environment]", "File[/usr/local/libexec/transcode-worker-run]"}
    rules = f"File[{RULES_FILE}]"
    if kind == "supervisord":
        restarts = {"workers": "Exec[supervisorctl restart transcode-worker]",
                    "dashboard": "Exec[supervisorctl restart transcode-worker-dashboard]",
                    "ingest": "Exec[supervisorctl restart transcode-worker-ingest]"}
    else:
        restarts = {"workers": "Service[transcode-worker@01]",
                    "dashboard": "Service[transcode-worker-dashboard]",
                    "ingest": "Service[transcode-worker-ingest]"}
    for name, resource in restarts.items():
        if resource not in subs:
            report.fail(f"puppet ({kind}): no {resource} restarting the {name}")
            continue
        got = set(subs[resource])
        if not shared <= got:
            report.fail(f"puppet ({kind}): {resource} does not follow {sorted(shared - got)}")
        if (rules in got) != (name == "ingest"):
            report.fail(f"puppet ({kind}): {resource} {'ignores' if name == 'ingest' else 'follows'} {rules}")


def main(tmp, binary):
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        print(f"check-deploy: FAIL: the worker binary {binary!r} is not an executable file", file=sys.stderr)
        return 1
    report = Report()
    with open("config/transcode-worker.toml", "rb") as f:
        defaults = tomllib.load(f)
    check_compose(report, tmp, defaults)
    stages = dockerfile_stages()
    check_package_lists(report, stages)
    if len(stages) >= 2:
        check_libraries(report, binary, stages[-1][1])
    for state, kind in ((f"{tmp}/p-supervisord", "supervisord"), (f"{tmp}/p-systemd", "systemd")):
        try:
            check_rendered(report, tmp, binary, state, kind)
        except (KeyError, ValueError, IndexError, tomllib.TOMLDecodeError) as e:
            report.fail(f"puppet ({kind}): the catalogue's files: {type(e).__name__}: {e}")
    for f in report.failures:
        print(f"check-deploy: FAIL: {f}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
