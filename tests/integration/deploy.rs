//! The puppet module's supervisord deployment, run for real: the module
//! (`puppet/modules/transcode_worker`) is compiled by `puppet apply --noop`
//! with test parameters from Hiera, the files it would write (program
//! section, start script, configuration, environment file) are taken from
//! the compiled catalogue and written into a temporary folder, and a real
//! supervisord with a private configuration runs the workers from them.
//!
//! `supervisorctl stop` in the middle of a job makes the worker give the job
//! back (it exits 0 by itself, well within `stopwaitsecs`), the other worker
//! of the program finishes it, and `supervisorctl start` brings the stopped
//! worker back, able to take jobs again.
//!
//! With `dashboard` and ingest's rules, the catalogue's dashboard and
//! ingest programs run the same way beside a worker: the dashboard answers
//! on its configured address (actions only with the token of the
//! environment file), ingest turns an upload into a job the worker
//! completes, and `supervisorctl stop` ends each with exit status 0. The
//! rules file of a `source` is copied from there, as `puppet apply` would.
//!
//! Needs `puppet` and `supervisor` (Debian packages, installed by
//! `scripts/install-deps`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use transcode_worker::error::ErrorKind;
use transcode_worker::job::Phase;

use crate::common::farm::{Farm, Rabbit, WORKER_BIN};
use crate::common::services::{RabbitNode, RabbitOptions};
use crate::common::{children_of, pipelines_of};
use crate::common::{fixtures, poll_until, run_with_timeout, wait_for, wait_for_value};

/// Long enough for a few small transcodes on a loaded 2-core machine.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// The module under test.
const MODULE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/puppet/modules");

/// Program name of the workers in supervisord.
const PROGRAM: &str = "transcode-worker";

/// The drain timeout the module is given (seconds).
const DRAIN_SECS: u64 = 1;

/// Settings the module takes as class parameters; everything else in the
/// farm's environment goes to `extra_env`.
const CLASS_ENV: &[&str] = &[
    "AMQP_URL",
    "S3_BUCKET_NAME",
    "AWS_S3_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
];

/// Finds `program` on PATH or in the sbin folders (supervisord lives in
/// /usr/bin on Debian, but be lenient).
fn find_program(program: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("{program} is not installed: run scripts/install-deps"))
}

/// The name of the user running the tests (the workers run as that user:
/// supervisord accepts `user=` naming the user it already runs as).
fn current_user() -> String {
    let out =
        run_with_timeout(Command::new("id").arg("-un"), Duration::from_secs(10)).expect("id -un");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The module's parameters (as Hiera gives them) for `worker_count`
/// workers of `farm` under a private supervisord, everything inside
/// `root`: the farm's settings, a 1 s drain, no packages, user or
/// supervisord managed, the test's user.
fn module_params(farm: &Farm, root: &Path, worker_count: u32) -> serde_json::Map<String, Value> {
    let mut extra_env: serde_json::Map<String, Value> = farm
        .env
        .iter()
        .filter(|(k, _)| !CLASS_ENV.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    extra_env.insert("RUST_LOG".into(), "info,transcode_worker=debug".into());
    let env = |k: &str| farm.env.get(k).cloned().unwrap_or_default();
    let params = json!({
        "transcode_worker::binary_source": WORKER_BIN,
        "transcode_worker::binary_path": WORKER_BIN,
        "transcode_worker::amqp_url": env("AMQP_URL"),
        "transcode_worker::s3_bucket": env("S3_BUCKET_NAME"),
        "transcode_worker::s3_endpoint": env("AWS_S3_ENDPOINT_URL"),
        "transcode_worker::s3_region": env("AWS_REGION"),
        "transcode_worker::aws_access_key_id": env("AWS_ACCESS_KEY_ID"),
        "transcode_worker::aws_secret_access_key": env("AWS_SECRET_ACCESS_KEY"),
        "transcode_worker::worker_count": worker_count,
        "transcode_worker::drain_timeout": DRAIN_SECS,
        "transcode_worker::extra_env": extra_env,
        "transcode_worker::log_format": "pretty",
        "transcode_worker::manage_packages": false,
        "transcode_worker::manage_user": false,
        "transcode_worker::manage_supervisor": false,
        "transcode_worker::user": current_user(),
        "transcode_worker::wrapper_path": root.join("libexec/transcode-worker-run"),
        "transcode_worker::config_dir": root.join("etc"),
        "transcode_worker::state_dir": root.join("state"),
        "transcode_worker::scratch_dir": root.join("state/scratch"),
        "transcode_worker::log_dir": root.join("log"),
        "transcode_worker::supervisor_conf_dir": root.join("conf.d"),
    });
    match params {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

/// What the module's catalogue holds: the files it would manage.
struct Catalogue {
    /// Path -> (content, mode) of every file with content.
    files: HashMap<String, (String, Option<String>)>,
    /// Every directory it would make.
    dirs: Vec<String>,
    /// Path -> (source, mode) of every file copied from a source.
    sources: HashMap<String, (String, Option<String>)>,
}

/// Compiles the module with `hiera` as its parameters (automatic parameter
/// lookup, as a site's Hiera would give them) and returns the catalogue's
/// files. `puppet apply --noop` with private settings folders changes
/// nothing on this machine.
fn compile_module(dir: &Path, hiera: &Value) -> Catalogue {
    compile_site(dir, hiera, "include transcode_worker\n")
}

/// Compiles the site manifest `site` (which uses the module) with `hiera`
/// as its parameters and returns the catalogue's files.
fn compile_site(dir: &Path, hiera: &Value, site: &str) -> Catalogue {
    let puppet = find_program("puppet");
    let data = dir.join("hiera");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("test.json"),
        serde_json::to_vec_pretty(hiera).unwrap(),
    )
    .unwrap();
    let hiera_yaml = dir.join("hiera.yaml");
    std::fs::write(
        &hiera_yaml,
        format!(
            "---\nversion: 5\ndefaults:\n  datadir: {}\n  data_hash: json_data\nhierarchy:\n  - name: test\n    path: test.json\n",
            data.display()
        ),
    )
    .unwrap();
    let site_pp = dir.join("site.pp");
    std::fs::write(&site_pp, site).unwrap();
    let site = site_pp;

    let state = dir.join("puppet");
    let mut cmd = Command::new(puppet);
    cmd.arg("apply").arg("--noop").arg("--detailed-exitcodes");
    for (opt, sub) in [
        ("--confdir", "conf"),
        ("--vardir", "var"),
        ("--codedir", "code"),
        ("--logdir", "log"),
        ("--rundir", "run"),
        ("--publicdir", "pub"),
    ] {
        cmd.arg(opt).arg(state.join(sub));
    }
    cmd.arg("--modulepath")
        .arg(MODULE_PATH)
        .arg("--hiera_config")
        .arg(&hiera_yaml)
        .arg("--catalog_cache_terminus")
        .arg("json")
        .arg(&site);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120)).expect("puppet apply");
    // --detailed-exitcodes: 0 nothing to change, 2 changes (noop); 4 and 6 failures.
    assert!(
        matches!(out.status.code(), Some(0) | Some(2)),
        "puppet apply --noop failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let catalog_dir = state.join("var/client_data/catalog");
    let file = std::fs::read_dir(&catalog_dir)
        .unwrap_or_else(|e| panic!("no catalogue in {}: {e}", catalog_dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a catalogue file");
    let catalog: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let mut files = HashMap::new();
    let mut dirs = Vec::new();
    let mut sources = HashMap::new();
    for resource in catalog["resources"].as_array().expect("resources") {
        if resource["type"] != "File" {
            continue;
        }
        let title = resource["title"].as_str().unwrap().to_string();
        let params = &resource["parameters"];
        if params["ensure"] == "directory" {
            dirs.push(title);
        } else if let Some(content) = params["content"].as_str() {
            let mode = params["mode"].as_str().map(str::to_string);
            files.insert(title, (content.to_string(), mode));
        } else if let Some(source) = params["source"].as_str() {
            let mode = params["mode"].as_str().map(str::to_string);
            sources.insert(title, (source.to_string(), mode));
        }
    }
    Catalogue {
        files,
        dirs,
        sources,
    }
}

/// Writes the catalogue's directories and files (all inside the test's
/// folder) as `puppet apply` would; files from a source are copied from
/// that path (the binary, whose source is where it is, stays).
fn write_catalogue(catalogue: &Catalogue, root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for dir in &catalogue.dirs {
        assert!(
            Path::new(dir).starts_with(root),
            "{dir} is outside {root:?}"
        );
        std::fs::create_dir_all(dir).unwrap();
    }
    let copied = catalogue
        .sources
        .iter()
        .filter(|(path, (source, _))| path != &source)
        .map(|(path, (source, mode))| {
            let content = std::fs::read_to_string(source)
                .unwrap_or_else(|e| panic!("source {source} of {path}: {e}"));
            (path, (content, mode.clone()))
        })
        .collect::<Vec<_>>();
    let written = catalogue
        .files
        .iter()
        .map(|(p, (c, m))| (p, (c.clone(), m.clone())));
    for (path, (content, mode)) in written.chain(copied) {
        assert!(
            Path::new(path).starts_with(root),
            "{path} is outside {root:?}"
        );
        std::fs::create_dir_all(Path::new(path).parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        if let Some(mode) = mode {
            let mode = u32::from_str_radix(&mode, 8).expect("octal mode");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

/// A private supervisord (own socket, pid file and logs in a temporary
/// folder) including the program sections of `conf_d`. Stopped, with its
/// workers, when dropped, also when the test panics.
struct Supervisord {
    child: Child,
    conf: PathBuf,
    dir: PathBuf,
    log_dir: PathBuf,
}

impl Supervisord {
    fn start(dir: &Path, conf_d: &Path, log_dir: &Path) -> Supervisord {
        let supervisord = find_program("supervisord");
        let conf = dir.join("supervisord.conf");
        std::fs::write(
            &conf,
            format!(
                "[unix_http_server]\nfile={sock}\nchmod=0700\n\n\
                 [supervisord]\nnodaemon=true\nlogfile={log}\npidfile={pid}\n\
                 childlogdir={dir}\nloglevel=info\n\n\
                 [rpcinterface:supervisor]\n\
                 supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
                 [supervisorctl]\nserverurl=unix://{sock}\n\n\
                 [include]\nfiles = {conf_d}/*.conf\n",
                sock = dir.join("supervisor.sock").display(),
                log = dir.join("supervisord.log").display(),
                pid = dir.join("supervisord.pid").display(),
                dir = dir.display(),
                conf_d = conf_d.display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(supervisord);
        cmd.arg("-n")
            .arg("-c")
            .arg(&conf)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // If the test dies without unwinding, supervisord gets a SIGTERM and
        // stops its workers. (The death signal follows the spawning thread:
        // the test's own thread, which runs the test body to its end.)
        // SAFETY: prctl is async-signal-safe; nothing else runs before exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start supervisord");
        let sup = Supervisord {
            child,
            conf,
            dir: dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
        };
        poll_until(
            Duration::from_secs(30),
            "supervisord's control socket",
            || {
                sup.try_ctl(&["pid"])
                    .is_some_and(|out| out.trim().parse::<u32>().is_ok())
            },
        );
        sup
    }

    /// Runs supervisorctl against this supervisord; `None` if it could not
    /// talk to it. `timeout` bounds the command (a `stop` waits for the drain).
    fn ctl_with_timeout(&self, args: &[&str], timeout: Duration) -> Option<String> {
        let out = run_with_timeout(
            Command::new(find_program("supervisorctl"))
                .arg("-c")
                .arg(&self.conf)
                .args(args),
            timeout,
        )
        .ok()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (!text.contains("refused connection") && !text.contains("no such file")).then_some(text)
    }

    fn try_ctl(&self, args: &[&str]) -> Option<String> {
        self.ctl_with_timeout(args, Duration::from_secs(20))
    }

    fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args)
            .unwrap_or_else(|| panic!("supervisorctl {args:?} could not reach supervisord"))
    }

    /// State (`RUNNING`, `STOPPED`, ...) and pid of process `name`
    /// (`group:process`).
    fn status(&self, name: &str) -> (String, Option<i32>) {
        let out = self.ctl(&["status", name]);
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not in status:\n{out}"));
        let mut cols = line.split_whitespace();
        cols.next();
        let state = cols.next().unwrap_or_default().to_string();
        let pid = line
            .split("pid ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|p| p.trim().parse().ok());
        (state, pid)
    }

    /// Waits until `name` is RUNNING and returns its pid.
    async fn wait_running(&self, name: &str, timeout: Duration) -> i32 {
        wait_for_value(timeout, &format!("{name} RUNNING"), || async {
            match self.status(name) {
                (state, Some(pid)) if state == "RUNNING" => Some(pid),
                _ => None,
            }
        })
        .await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("supervisord.log")).unwrap_or_default()
    }

    fn worker_logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(&self.log_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                entry.path().display(),
                std::fs::read_to_string(entry.path()).unwrap_or_default()
            ));
        }
        out
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- supervisord log ---\n{}\n{}",
                self.log(),
                self.worker_logs()
            );
        }
        let pid = self.child.id() as i32;
        // Graceful: supervisord stops its workers (each drains for 1 s).
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // It hung: kill its processes, then it.
        for child in children_of(pid) {
            // SAFETY: kill(2) on a process supervisord started for this test.
            unsafe { libc::kill(-child, libc::SIGKILL) };
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisorctl_stop_mid_job_gives_the_job_to_the_other_worker_and_start_brings_it_back() {
    // `identity sleep-time` slows each frame down: 50 frames at 120 ms make
    // a 6 s encode, far longer than the 1 s drain.
    let slow = [("TRANSCODE_PIPELINE__EXTRA_ALLOWED_ELEMENTS", "identity")];
    let farm = Farm::s3(&slow).await;
    farm.put_input("tapes/vhs.mov", &fixtures::mjpeg_mov(2))
        .await;

    // The module, with test parameters, compiled into a temporary root.
    let root = TempDir::new().expect("temp dir");
    let root_path = root.path();
    let catalogue = compile_module(
        root_path,
        &Value::Object(module_params(&farm, root_path, 2)),
    );
    let section_path = root_path.join("conf.d/transcode-worker.conf");
    let section = &catalogue
        .files
        .get(section_path.to_str().unwrap())
        .unwrap_or_else(|| panic!("no program section in {:?}", catalogue.files.keys()))
        .0;
    for line in [
        "[program:transcode-worker]",
        "numprocs=2",
        "process_name=%(program_name)s_%(process_num)02d",
        "stopsignal=TERM",
        // drain_timeout + 30 by default.
        "stopwaitsecs=31",
        "autorestart=true",
        "killasgroup=true",
    ] {
        assert!(
            section.lines().any(|l| l == line),
            "{line:?} missing:\n{section}"
        );
    }
    let env_file = &catalogue.files[root_path.join("etc/environment").to_str().unwrap()];
    assert_eq!(env_file.1.as_deref(), Some("0600"), "environment file mode");
    write_catalogue(&catalogue, root_path);

    let sup = Supervisord::start(root_path, &root_path.join("conf.d"), &root_path.join("log"));
    let host = gethostname::gethostname().to_string_lossy().to_string();
    let name = |n: u32| format!("{PROGRAM}:{PROGRAM}_{n:02}");
    let worker_id = |n: u32| format!("{host}:{n:02}");
    let first_pids = [
        sup.wait_running(&name(1), JOB_TIMEOUT).await,
        sup.wait_running(&name(2), JOB_TIMEOUT).await,
    ];

    // A slow job: whichever worker takes it is stopped in the middle of it.
    let mut watch = farm.watch_progress().await;
    farm.publish_job(json!({
        "job_id": "tape-1", "input_key": "tapes/vhs.mov", "output_key": "mp4/vhs.mp4",
        "transcode_options": "identity sleep-time=120000 ! videoconvert ! x264enc"
    }))
    .await;
    let taker = loop {
        let e = watch.next(JOB_TIMEOUT).await;
        if e.job_id == "tape-1" && e.state == Phase::Transcoding && e.progress > 5.0 {
            break e.worker;
        }
    };
    let (stopped, other) = if taker == worker_id(1) {
        (1, 2)
    } else {
        assert_eq!(taker, worker_id(2), "unknown worker id");
        (2, 1)
    };
    let stopped_pid = first_pids[stopped as usize - 1];
    let pipeline = pipelines_of(stopped_pid);
    assert!(!pipeline.is_empty(), "the pipeline runs in a child process");

    // supervisorctl stop waits until the worker has exited: it drains for
    // 1 s, gives the job back and exits 0, long before stopwaitsecs (31 s).
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let conf = sup.conf.clone();
        let target = name(stopped);
        move || {
            run_with_timeout(
                Command::new(find_program("supervisorctl"))
                    .arg("-c")
                    .arg(conf)
                    .args(["stop", &target]),
                Duration::from_secs(60),
            )
        }
    })
    .await
    .unwrap()
    .expect("supervisorctl stop");
    let took = started.elapsed();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.contains("stopped"), "supervisorctl stop: {out}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(25),
        "stop took {took:?}: the worker should drain for 1 s and exit by itself"
    );
    assert_eq!(sup.status(&name(stopped)).0, "STOPPED");
    let log = sup.log();
    assert!(
        log.contains(&format!("stopped: {PROGRAM}_{stopped:02} (exit status 0)")),
        "the worker should exit 0 on SIGTERM, not be killed:\n{log}"
    );
    // Its pipeline process is gone too.
    wait_for(Duration::from_secs(10), "pipeline process gone", || {
        let pipeline = pipeline.clone();
        async move {
            pipeline
                .iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        }
    })
    .await;

    // The job went back to the queue and the other worker finished it.
    let last = watch.until_final("tape-1", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert_eq!(last.worker, worker_id(other), "{:#?}", watch.of("tape-1"));
    let given_back = watch
        .of("tape-1")
        .into_iter()
        .find(|e| e.worker == worker_id(stopped) && e.state == Phase::Failed)
        .unwrap_or_else(|| {
            panic!(
                "no failed event from the stopped worker: {:#?}",
                watch.of("tape-1")
            )
        });
    assert_eq!(
        given_back.error_kind,
        Some(ErrorKind::Shutdown),
        "{given_back:#?}"
    );
    assert_eq!(given_back.will_retry, Some(true), "{given_back:#?}");
    let output = farm.get_output("mp4/vhs.mp4").await.expect("output");
    fixtures::assert_decodes(&output, true, true);

    // supervisorctl start brings the stopped worker back ...
    let out = sup.ctl(&["start", &name(stopped)]);
    assert!(out.contains("started"), "supervisorctl start: {out}");
    let new_pid = sup.wait_running(&name(stopped), JOB_TIMEOUT).await;
    assert_ne!(new_pid, stopped_pid, "a new process");
    // ... and it takes jobs again: with the other one stopped (idle, so at
    // once), the next job can only go to it.
    let out = sup.ctl(&["stop", &name(other)]);
    assert!(out.contains("stopped"), "supervisorctl stop: {out}");
    farm.publish_job(json!({
        "job_id": "tape-2", "input_key": "tapes/vhs.mov", "output_key": "mp4/vhs-2.mp4",
        "transcode_options": "videoconvert ! x264enc"
    }))
    .await;
    let last = watch.until_final("tape-2", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    assert_eq!(last.worker, worker_id(stopped));
    assert!(farm.output_exists("mp4/vhs-2.mp4").await);
    drop(sup);
}

/// The module's `transcode_worker::rabbitmq_definitions` on a broker host:
/// the files it writes make a fresh RabbitMQ node start with the farm's
/// queues (and the users given), so a job published before any worker
/// started is kept and then done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_puppet_definitions_make_a_fresh_broker_keep_early_jobs() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("root");
    let definitions_dir = root.join("etc/rabbitmq/definitions.d");
    let conf_file = root.join("etc/rabbitmq/conf.d/90-transcode-worker-definitions.conf");
    // The hash of guest/guest, as config/rabbitmq-definitions/users.json has it.
    let users: Value =
        serde_json::from_str(include_str!("../../config/rabbitmq-definitions/users.json")).unwrap();
    let hash = users["users"][0]["password_hash"].as_str().unwrap();
    let hiera = json!({
        "transcode_worker::rabbitmq_definitions::definitions_dir": definitions_dir,
        "transcode_worker::rabbitmq_definitions::conf_file": conf_file,
        "transcode_worker::rabbitmq_definitions::users": {
            "guest": {"password_hash": hash, "tags": ["administrator"]}
        },
    });
    let catalogue = compile_site(
        dir.path(),
        &hiera,
        "include transcode_worker::rabbitmq_definitions\n",
    );
    write_catalogue(&catalogue, dir.path());
    let conf = std::fs::read_to_string(&conf_file).unwrap();
    let line = conf
        .lines()
        .find(|l| l.starts_with("load_definitions"))
        .expect("a load_definitions line")
        .to_string();
    assert_eq!(
        line,
        format!("load_definitions = {}", definitions_dir.display())
    );

    let node = std::sync::Arc::new(RabbitNode::start(RabbitOptions::default().conf(line)));
    let defaults = [
        ("TRANSCODE_BROKER__JOBS_QUEUE", "transcoding_jobs"),
        (
            "TRANSCODE_BROKER__DEAD_LETTER_QUEUE",
            "transcoding_jobs.dead",
        ),
        ("TRANSCODE_BROKER__PROGRESS_QUEUE", "transcoding_progress"),
        (
            "TRANSCODE_BROKER__PROGRESS_EXCHANGE",
            "transcoding.progress",
        ),
    ];
    let farm = Farm::s3_undeclared(Rabbit::Own(node.clone()), &defaults).await;
    farm.put_input("in/a.wmv", &fixtures::wmv_with_audio(1))
        .await;
    farm.publish_raw(
        br#"{"job_id": "early", "input_key": "in/a.wmv", "output_key": "out/a.mp4", "transcode_options": "videoconvert ! x264enc"}"#,
    )
    .await;
    wait_for(JOB_TIMEOUT, "the job waiting in the queue", || async {
        farm.ready_jobs().await == 1
    })
    .await;
    let mut watch = farm.watch_progress().await;
    let worker = farm.spawn_worker(&defaults);
    let last = watch.until_final("early", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}\n{}", worker.logs());
}

/// The dashboard's token in the test below: a quote and a dollar, which the
/// environment file must give back verbatim.
const DASHBOARD_TOKEN: &str = "it's the da$hboard token";

/// Ingest's rules in the test below: each upload under `uploads/` makes one
/// quick transcode.
const INGEST_RULES: &str = r#"
[[rule]]
prefix = "uploads/"
outputs = [{ output_key = "renditions/{stem}.mp4", transcode_options = "videoconvert ! x264enc" }]
"#;

/// A free TCP port on the loopback address (the dashboard's configured
/// address must be known before it starts).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

/// `supervisorctl stop` of the one-process program `name`: it stops, and
/// exits 0 by itself (not killed) well within its stopwaitsecs (30 s).
fn stop_cleanly(sup: &Supervisord, name: &str) {
    let started = Instant::now();
    let out = sup
        .ctl_with_timeout(&["stop", name], Duration::from_secs(60))
        .unwrap_or_else(|| panic!("supervisorctl stop {name} could not reach supervisord"));
    let took = started.elapsed();
    assert!(out.contains("stopped"), "supervisorctl stop {name}: {out}");
    assert!(
        took < Duration::from_secs(20),
        "stopping {name} took {took:?}: it should exit by itself on SIGTERM"
    );
    assert_eq!(sup.status(name).0, "STOPPED");
    let log = sup.log();
    assert!(
        log.contains(&format!("stopped: {name} (exit status 0)")),
        "{name} should exit 0 on SIGTERM, not be killed:\n{log}"
    );
}

/// The module's `dashboard` and `ingest_rules_source`/`ingest_poll`, run
/// for real: the compiled catalogue's programs (one process each, the
/// workers' start script, configuration and environment file) under a
/// private supervisord beside a worker. The dashboard answers on its
/// configured address and takes actions with the token that only the
/// environment file holds; ingest, listing the bucket every second, turns
/// an upload into a job that the worker completes; `supervisorctl stop`
/// ends each with exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_puppet_dashboard_and_ingest_programs_serve_the_farm_and_make_jobs_under_supervisord() {
    let farm = Farm::s3(&[]).await;
    farm.put_input("tapes/by-hand.mov", &fixtures::mjpeg_mov(1))
        .await;
    let root = TempDir::new().expect("temp dir");
    let root_path = root.path();
    // The rules come from a file on the node (the `source` form).
    let rules_source = root_path.join("site/ingest.toml");
    std::fs::create_dir_all(rules_source.parent().unwrap()).unwrap();
    std::fs::write(&rules_source, INGEST_RULES).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut params = module_params(&farm, root_path, 1);
    for (key, value) in [
        ("dashboard", json!(true)),
        ("dashboard_listen", json!(listen)),
        ("dashboard_token", json!(DASHBOARD_TOKEN)),
        ("ingest_rules_source", json!(rules_source)),
        ("ingest_poll", json!(1)),
    ] {
        params.insert(format!("transcode_worker::{key}"), value);
    }
    let catalogue = compile_module(root_path, &Value::Object(params));

    // One program each, started by the workers' start script; the token is
    // in the mode-0600 environment file and in no other file.
    let wrapper = root_path.join("libexec/transcode-worker-run");
    let rules_file = root_path.join("etc/ingest.toml");
    for (program, command) in [
        (
            "transcode-worker-dashboard",
            format!("{} dashboard --listen {listen}", wrapper.display()),
        ),
        (
            "transcode-worker-ingest",
            format!(
                "{} ingest --rules {} --poll 1",
                wrapper.display(),
                rules_file.display()
            ),
        ),
    ] {
        let path = root_path.join(format!("conf.d/{program}.conf"));
        let section = &catalogue
            .files
            .get(path.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {program} section in {:?}", catalogue.files.keys()))
            .0;
        for line in [
            format!("[program:{program}]"),
            format!("command={command}"),
            format!("user={}", current_user()),
            "stopsignal=TERM".to_string(),
            "autorestart=true".to_string(),
        ] {
            assert!(
                section.lines().any(|l| l == line),
                "{line:?} missing:\n{section}"
            );
        }
        assert!(!section.contains("numprocs"), "one process:\n{section}");
    }
    let env_path = root_path.join("etc/environment");
    let (env_text, env_mode) = &catalogue.files[env_path.to_str().unwrap()];
    assert_eq!(env_mode.as_deref(), Some("0600"), "environment file mode");
    assert!(
        env_text.contains("TRANSCODE_DASHBOARD__TOKEN="),
        "{env_text}"
    );
    for (path, (content, _)) in &catalogue.files {
        assert!(
            path == env_path.to_str().unwrap() || !content.contains("da$hboard"),
            "the dashboard's token is in {path}:\n{content}"
        );
    }
    write_catalogue(&catalogue, root_path);
    assert_eq!(std::fs::read_to_string(&rules_file).unwrap(), INGEST_RULES);

    let sup = Supervisord::start(root_path, &root_path.join("conf.d"), &root_path.join("log"));
    let dashboard = "transcode-worker-dashboard";
    let ingest = "transcode-worker-ingest";
    sup.wait_running(dashboard, JOB_TIMEOUT).await;
    sup.wait_running(ingest, JOB_TIMEOUT).await;
    sup.wait_running(&format!("{PROGRAM}:{PROGRAM}_01"), JOB_TIMEOUT)
        .await;

    // The dashboard answers on its configured address ...
    let url = format!("http://{listen}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Not listening yet: a refused connection, tried again.
    let queues = wait_for_value(JOB_TIMEOUT, "the dashboard's /api/queues", || async {
        let response = http.get(format!("{url}/api/queues")).send().await.ok()?;
        assert_eq!(response.status(), 200, "GET /api/queues");
        let text = response.text().await.expect("a body");
        Some(serde_json::from_str::<Value>(&text).expect("JSON"))
    })
    .await;
    assert!(queues["jobs"].is_array(), "{queues}");
    assert!(queues["dead_letters"].is_object(), "{queues}");
    let about = http
        .get(format!("{url}/api/about"))
        .send()
        .await
        .expect("GET /api/about")
        .text()
        .await
        .expect("a body");
    let about: Value = serde_json::from_str(&about).expect("JSON");
    assert_eq!(
        about["actions"], true,
        "the token reached the dashboard: {about}"
    );
    // ... and takes an action with the token, verbatim from the environment
    // file, and with no other.
    let submit = |token: &str| {
        http.post(format!("{url}/api/jobs"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("origin", &url)
            .body(
                json!({
                    "job_id": "from-dashboard", "input_key": "tapes/by-hand.mov",
                    "output_key": "mp4/by-hand.mp4", "transcode_options": "videoconvert ! x264enc"
                })
                .to_string(),
            )
            .send()
    };
    let mut watch = farm.watch_progress().await;
    assert_eq!(
        submit("it's the dashboard token").await.unwrap().status(),
        401
    );
    let response = submit(DASHBOARD_TOKEN).await.unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let last = watch.until_final("from-dashboard", JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");

    // ingest lists the bucket every second: an upload becomes a job, which
    // the worker completes.
    farm.put_input("uploads/clip.mov", &fixtures::mjpeg_mov(1))
        .await;
    let made = watch
        .until(JOB_TIMEOUT, |e| e.job_id.starts_with("ingest-"))
        .await;
    let last = watch.until_final(&made.job_id, JOB_TIMEOUT).await;
    assert_eq!(last.state, Phase::Completed, "{last:#?}");
    let output = farm
        .get_output("renditions/clip.mp4")
        .await
        .expect("the rendition ingest's job made");
    fixtures::assert_decodes(&output, true, false);
    let ingest_log =
        std::fs::read_to_string(root_path.join(format!("log/{ingest}.log"))).unwrap_or_default();
    assert!(
        ingest_log.contains(&made.job_id) && ingest_log.contains("uploads/clip.mov"),
        "ingest logs the job it made:\n{ingest_log}"
    );

    // supervisorctl stop ends each cleanly; the address no longer answers.
    stop_cleanly(&sup, dashboard);
    assert!(
        std::net::TcpStream::connect(&listen).is_err(),
        "the dashboard still listens on {listen}"
    );
    stop_cleanly(&sup, ingest);
    // The token is in no log: supervisord's, the programs'.
    let logs = format!("{}{}", sup.log(), sup.worker_logs());
    assert!(
        !logs.contains("da$hboard"),
        "the dashboard's token is in a log:\n{logs}"
    );
    drop(sup);
}
