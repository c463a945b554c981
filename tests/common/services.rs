//! Real services for integration tests, run as plain child processes:
//! private RabbitMQ nodes and `s3-test-server` S3 servers, each in its own temporary
//! directory on random loopback ports.
//!
//! * [`shared_rabbit`] / [`shared_s3`]: one instance per test process, started
//!   on first use. Tests sharing them must use unique names
//!   ([`super::random_name`]) and must not stop them: fault tests start their
//!   own with [`RabbitNode::start`] / [`S3Server::start`].
//! * Every service process is forked from one process-lifetime thread with
//!   `PR_SET_PDEATHSIG = SIGKILL` and its own process group, so it dies with
//!   the test process even when that one is killed. Shared instances are also
//!   killed (and their directories removed) by an `atexit` handler; owned
//!   instances are killed on drop.
//!
//! Binaries: `rabbitmq-server` from `$TEST_RABBITMQ_BIN_DIR` or
//! `/usr/lib/rabbitmq/bin`; `s3-test-server` (tools/s3-test-server: the s3s-fs
//! library's S3 server) from `$TEST_S3_SERVER`, `$PATH` or
//! `~/.cargo/bin` (see `scripts/install-deps`).
//!
//! Setting `TEST_S3_ENDPOINT`, `TEST_S3_ACCESS_KEY`, `TEST_S3_SECRET_KEY` (and
//! optionally `TEST_S3_REGION`, default `us-east-1`) makes [`shared_s3`] use
//! that external server (MinIO, Garage, ...) instead of starting `s3-test-server`.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Shared instances
// ---------------------------------------------------------------------------

static SHARED_RABBIT: OnceLock<RabbitNode> = OnceLock::new();
static SHARED_S3: OnceLock<S3Server> = OnceLock::new();

/// The RabbitMQ node shared by all tests of this process (default options),
/// started on first use. Don't stop or restart it.
pub fn shared_rabbit() -> &'static RabbitNode {
    SHARED_RABBIT.get_or_init(|| {
        register_exit_cleanup();
        RabbitNode::start(RabbitOptions::default())
    })
}

/// The S3 server shared by all tests of this process: the external server
/// named by `TEST_S3_ENDPOINT` if set, otherwise an `s3-test-server` started on first
/// use. Give each test its own bucket ([`S3Server::random_bucket`]).
pub fn shared_s3() -> &'static S3Server {
    SHARED_S3.get_or_init(|| {
        if let Some(external) = S3Server::external_from_env() {
            return external;
        }
        register_exit_cleanup();
        S3Server::start()
    })
}

fn register_exit_cleanup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn` that never unwinds.
        let rc = unsafe { libc::atexit(cleanup_shared_at_exit) };
        assert_eq!(rc, 0, "atexit failed");
    });
}

/// Statics are never dropped: kill the shared services and remove their
/// directories when the test process exits normally.
extern "C" fn cleanup_shared_at_exit() {
    if let Some(node) = SHARED_RABBIT.get() {
        node.proc.kill_at_exit();
        let _ = fs::remove_dir_all(node.dir.path());
    }
    if let Some(server) = SHARED_S3.get() {
        if let Some(local) = &server.local {
            local.proc.kill_at_exit();
            let _ = fs::remove_dir_all(local.dir.path());
        }
    }
}

// ---------------------------------------------------------------------------
// Process plumbing
// ---------------------------------------------------------------------------

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns a long-running service process: in its own process group, with
/// `PR_SET_PDEATHSIG = SIGKILL`. The fork happens on a dedicated thread that
/// lives as long as the process, because the parent-death signal fires when
/// the *thread* that forked exits (test threads come and go).
pub fn spawn_service(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

    cmd.process_group(0);
    // SAFETY: only calls the async-signal-safe `prctl` between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-service-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the service spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    lock(spawner)
        .send((cmd, reply_tx))
        .expect("service spawner thread is gone");
    reply_rx.recv().expect("service spawner thread is gone")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A service's current process, if any.
struct ServiceProcess {
    child: Mutex<Option<Child>>,
    /// Process group (= pid of the child) or 0; readable without the lock.
    pgid: AtomicI32,
}

impl ServiceProcess {
    fn new() -> Self {
        Self {
            child: Mutex::new(None),
            pgid: AtomicI32::new(0),
        }
    }

    fn set(&self, child: Child) {
        self.pgid.store(child.id() as i32, Ordering::SeqCst);
        *lock(&self.child) = Some(child);
    }

    fn pid(&self) -> Option<u32> {
        lock(&self.child).as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited (it is then forgotten).
    fn exited(&self) -> Option<String> {
        let mut guard = lock(&self.child);
        let status = guard.as_mut()?.try_wait().ok()??;
        *guard = None;
        self.pgid.store(0, Ordering::SeqCst);
        Some(status.to_string())
    }

    fn is_running(&self) -> bool {
        let mut guard = lock(&self.child);
        match guard.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                *guard = None;
                self.pgid.store(0, Ordering::SeqCst);
                false
            }
            None => false,
        }
    }

    /// SIGKILLs the whole process group and reaps the child.
    fn kill(&self) {
        let mut guard = lock(&self.child);
        if let Some(mut child) = guard.take() {
            // SAFETY: plain syscall; the group is ours (process_group(0)).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
        self.pgid.store(0, Ordering::SeqCst);
    }

    /// Waits up to `timeout` for the process to exit on its own.
    fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// For the atexit handler: no lock (a test thread may hold it), no panics.
    fn kill_at_exit(&self) {
        let pgid = self.pgid.swap(0, Ordering::SeqCst);
        if pgid > 0 {
            // SAFETY: plain syscalls on our own child's process group.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
                libc::waitpid(pgid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// A TCP port on 127.0.0.1 that is free right now. Chosen below the
/// kernel's ephemeral range when possible, so that outgoing connections
/// (which take ephemeral ports) can't grab it while a service restarts.
pub fn free_port() -> u16 {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 12000 {
        for _ in 0..50 {
            let port = rand::random_range(10000..ephemeral_low);
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0")
        .port()
}

fn tail_file(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// A temporary directory named `{prefix}{pid}-XXXXXX`. Directories with this
/// prefix left behind by test processes that no longer exist (killed before
/// they could clean up) are removed first.
fn new_temp_dir(prefix: &str) -> TempDir {
    remove_stale_dirs(prefix);
    tempfile::Builder::new()
        .prefix(&format!("{prefix}{}-", std::process::id()))
        .tempdir()
        .expect("cannot create a temporary directory")
}

fn remove_stale_dirs(prefix: &str) {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn log_file(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------

/// Directory holding `rabbitmq-server` and `rabbitmqctl`. Uses the scripts in
/// the RabbitMQ tree, not `/usr/sbin/rabbitmq-server` (which switches to the
/// `rabbitmq` user).
pub fn rabbitmq_bin_dir() -> PathBuf {
    let candidates = std::env::var_os("TEST_RABBITMQ_BIN_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from("/usr/lib/rabbitmq/bin"),
            PathBuf::from("/usr/local/lib/rabbitmq/bin"),
        ]);
    for dir in candidates {
        if dir.join("rabbitmq-server").is_file() {
            return dir;
        }
    }
    panic!(
        "rabbitmq-server not found in $TEST_RABBITMQ_BIN_DIR or /usr/lib/rabbitmq/bin: \
         run scripts/install-deps"
    )
}

/// Path of the `s3-test-server` binary (installed by `scripts/install-deps`).
pub fn s3_server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TEST_S3_SERVER") {
        return PathBuf::from(path);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(cargo_home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3-test-server"))
        .find(|p| p.is_file())
        .expect("s3-test-server not found in $PATH or ~/.cargo/bin: run scripts/install-deps")
}

// ---------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------

/// Options for [`RabbitNode::start`].
#[derive(Clone, Debug)]
pub struct RabbitOptions {
    /// Extra `rabbitmq.conf` lines, e.g. `"consumer_timeout = 5000"`.
    pub conf: Vec<String>,
    /// Contents of `advanced.config` (Erlang terms), if any.
    pub advanced_config: Option<String>,
    /// How long to wait for the node to accept AMQP connections.
    pub start_timeout: Duration,
    /// Erlang cookie shared by the nodes of a cluster (each node gets a
    /// random one of its own otherwise).
    pub cookie: Option<String>,
}

impl Default for RabbitOptions {
    fn default() -> Self {
        Self {
            conf: Vec::new(),
            advanced_config: None,
            start_timeout: Duration::from_secs(60),
            cookie: None,
        }
    }
}

impl RabbitOptions {
    /// Adds a `rabbitmq.conf` line.
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.conf.push(line.into());
        self
    }

    /// Sets the contents of `advanced.config`.
    pub fn advanced_config(mut self, erlang_terms: impl Into<String>) -> Self {
        self.advanced_config = Some(erlang_terms.into());
        self
    }

    /// Sets the Erlang cookie, so that nodes started with the same one can
    /// form a cluster.
    pub fn cookie(mut self, cookie: impl Into<String>) -> Self {
        self.cookie = Some(cookie.into());
        self
    }

    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }
}

/// A private RabbitMQ node: own node name, ports, `HOME` (Erlang cookie),
/// config, data and log directories under one temporary directory. It binds
/// 127.0.0.1 only; the `guest` user works (loopback).
pub struct RabbitNode {
    node_name: String,
    port: u16,
    dist_port: u16,
    opts: RabbitOptions,
    bin_dir: PathBuf,
    dir: TempDir,
    proc: ServiceProcess,
}

enum BootError {
    /// The server process exited during startup (e.g. a port clash).
    Exited(String),
    TimedOut(String),
}

impl RabbitNode {
    /// Starts a node and waits until it accepts AMQP connections (typically
    /// 5-10 s). Panics with the tail of its logs if it doesn't.
    pub fn start(opts: RabbitOptions) -> RabbitNode {
        let mut failures = String::new();
        for attempt in 1..=3 {
            let node = RabbitNode::prepare(opts.clone());
            match node.boot() {
                Ok(()) => return node,
                // Most likely one of the ports was taken meanwhile: retry with new ones.
                Err(BootError::Exited(msg)) => {
                    let _ = writeln!(failures, "--- attempt {attempt}: {msg}");
                }
                Err(BootError::TimedOut(msg)) => panic!("{msg}"),
            }
        }
        panic!("RabbitMQ node failed to start 3 times:\n{failures}")
    }

    fn prepare(opts: RabbitOptions) -> RabbitNode {
        let dir = new_temp_dir("test-rabbitmq-");
        let port = free_port();
        let mut dist_port = free_port();
        while dist_port == port {
            dist_port = free_port();
        }
        let node_name = format!(
            "test-{}-{:08x}@localhost",
            std::process::id(),
            rand::random::<u32>()
        );
        let root = dir.path();
        for sub in ["home", "mnesia", "log"] {
            fs::create_dir_all(root.join(sub)).expect("cannot create node directories");
        }
        if let Some(cookie) = &opts.cookie {
            use std::os::unix::fs::PermissionsExt;
            let path = root.join("home").join(".erlang.cookie");
            fs::write(&path, cookie).expect("cannot write the Erlang cookie");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o400))
                .expect("cannot restrict the Erlang cookie");
        }
        let mut conf = String::from(
            "# generated by tests/common/services.rs\n\
             disk_free_limit.absolute = 10MB\n\
             log.file.level = info\n",
        );
        for line in &opts.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        fs::write(root.join("rabbitmq.conf"), conf).expect("cannot write rabbitmq.conf");
        if let Some(advanced) = &opts.advanced_config {
            fs::write(root.join("advanced.config"), advanced)
                .expect("cannot write advanced.config");
        }
        fs::write(root.join("enabled_plugins"), "[].\n").expect("cannot write enabled_plugins");
        fs::write(root.join("rabbitmq-env.conf"), "").expect("cannot write rabbitmq-env.conf");

        RabbitNode {
            node_name,
            port,
            dist_port,
            opts,
            bin_dir: rabbitmq_bin_dir(),
            dir,
            proc: ServiceProcess::new(),
        }
    }

    /// Environment that makes `rabbitmq-server` and the CLI tools use only
    /// this node's files (nothing from /etc/rabbitmq or /var/lib/rabbitmq).
    fn apply_env(&self, cmd: &mut Command) {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RABBITMQ_") {
                cmd.env_remove(key);
            }
        }
        let root = self.dir.path();
        let advanced = if self.opts.advanced_config.is_some() {
            root.join("advanced.config")
        } else {
            root.join("no-advanced.config")
        };
        cmd.env("HOME", root.join("home"))
            .env("RABBITMQ_NODENAME", &self.node_name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", root.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", root.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", advanced)
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                root.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", root.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", root.join("log"))
            .env("RABBITMQ_PID_FILE", root.join("rabbit.pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
    }

    /// Spawns the server and waits for AMQP readiness.
    fn boot(&self) -> Result<(), BootError> {
        let mut cmd = Command::new(self.bin_dir.join("rabbitmq-server"));
        self.apply_env(&mut cmd);
        // Makes the script `exec` the VM instead of running it as a
        // background job of a shell, so the parent-death signal reaches
        // beam.smp (and `-noinput` is still passed).
        cmd.env("RUNNING_UNDER_SYSTEMD", "true")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log_file(&self.stdout_log()))
            .stderr(log_file(&self.stdout_log()));
        let child =
            spawn_service(cmd).unwrap_or_else(|e| panic!("cannot run rabbitmq-server: {e}"));
        self.proc.set(child);

        let started = Instant::now();
        let deadline = started + self.opts.start_timeout;
        loop {
            if let Some(status) = self.proc.exited() {
                return Err(BootError::Exited(format!(
                    "rabbitmq-server {} exited during startup ({status})\n{}",
                    self.node_name,
                    self.log_tail(40)
                )));
            }
            if amqp_ready(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.proc.kill();
                return Err(BootError::TimedOut(format!(
                    "RabbitMQ node {} did not accept AMQP connections within {:?}\n{}",
                    self.node_name,
                    self.opts.start_timeout,
                    self.log_tail(60)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stdout_log(&self) -> PathBuf {
        self.dir.path().join("log").join("stdout.log")
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The node's temporary directory (config, `mnesia/`, `log/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Pid of the `beam.smp` process, if running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Last `lines` lines of the node's log and of its stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let node_log = self
            .dir
            .path()
            .join("log")
            .join(format!("{}.log", self.node_name));
        format!(
            "--- {}:\n{}\n--- {}:\n{}",
            node_log.display(),
            tail_file(&node_log, lines),
            self.stdout_log().display(),
            tail_file(&self.stdout_log(), lines)
        )
    }

    /// Runs `rabbitmqctl -n NODE ARGS...` (60 s timeout), e.g.
    /// `ctl(&["list_queues", "name", "messages"])`, `ctl(&["close_all_connections", "test"])`.
    pub fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        self.try_tool("rabbitmqctl", args)
    }

    /// Runs one of RabbitMQ's command line tools (`rabbitmqctl`,
    /// `rabbitmq-queues`, ...) against this node, 60 s timeout.
    pub fn try_tool(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(self.bin_dir.join(tool));
        self.apply_env(&mut cmd);
        cmd.arg("-n").arg(&self.node_name).args(args);
        let out = super::run_with_timeout(&mut cmd, Duration::from_secs(60))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{tool} {args:?} failed ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// [`try_ctl`](Self::try_ctl), panicking on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Graceful stop (`rabbitmqctl stop`), waiting for the VM to exit; falls
    /// back to SIGKILL after 30 s. No-op if not running.
    pub fn stop(&self) {
        if !self.proc.is_running() {
            return;
        }
        if let Err(e) = self.try_ctl(&["stop"]) {
            eprintln!(
                "graceful stop of {} failed, killing it: {e}",
                self.node_name
            );
        } else if self.proc.wait_exit(Duration::from_secs(30)) {
            return;
        }
        self.proc.kill();
    }

    /// SIGKILL (a crash: no clean shutdown). No-op if not running.
    pub fn kill(&self) {
        self.proc.kill();
    }

    /// Starts the node again after [`stop`](Self::stop) or
    /// [`kill`](Self::kill): same name, port and data directory, so durable
    /// queues and persistent messages survive.
    pub fn resume(&self) {
        assert!(
            !self.proc.is_running(),
            "{} is already running",
            self.node_name
        );
        match self.boot() {
            Ok(()) => {}
            Err(BootError::Exited(msg) | BootError::TimedOut(msg)) => panic!("{msg}"),
        }
    }

    /// [`stop`](Self::stop) then [`resume`](Self::resume).
    pub fn restart(&self) {
        self.stop();
        self.resume();
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

/// True once something on 127.0.0.1:`port` answers an AMQP 0-9-1 protocol
/// header with a frame (Connection.Start).
fn amqp_ready(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut frame_type = [0u8; 1];
    matches!(stream.read_exact(&mut frame_type), Ok(()) if frame_type[0] == 1)
}

// ---------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------

/// An S3 server: a local `s3-test-server` (random port and keys, own root
/// directory; buckets are directories in it) or an external one from
/// `TEST_S3_*` (only through [`shared_s3`]). Use path-style addressing.
pub struct S3Server {
    endpoint: String,
    access_key: String,
    secret_key: String,
    region: String,
    local: Option<LocalS3>,
}

struct LocalS3 {
    bin: PathBuf,
    /// Extra command-line flags.
    flags: Vec<String>,
    port: u16,
    dir: TempDir,
    proc: ServiceProcess,
}

impl S3Server {
    /// Starts a private `s3-test-server` and waits until it accepts connections.
    pub fn start() -> S3Server {
        S3Server::start_with(&[])
    }

    /// Starts a private `s3-test-server` that ignores `If-None-Match` and
    /// `If-Match` on writes, as servers without conditional writes do.
    pub fn start_ignoring_conditional_writes() -> S3Server {
        S3Server::start_with(&["--conditional-writes", "ignore"])
    }

    /// Starts a private `s3-test-server` that refuses writes with
    /// `If-None-Match` or `If-Match` (`NotImplemented`).
    pub fn start_refusing_conditional_writes() -> S3Server {
        S3Server::start_with(&["--conditional-writes", "refuse"])
    }

    /// Starts a private `s3-test-server` that fails every write with
    /// `If-None-Match` or `If-Match` (`PreconditionFailed`), object or not.
    pub fn start_failing_conditional_writes() -> S3Server {
        S3Server::start_with(&["--conditional-writes", "fail"])
    }

    /// Starts a private `s3-test-server` whose every `GetObject` waits
    /// `delay_ms` and the time its body takes at `mib_per_second` (0: no
    /// limit) before it answers, as storage far away does.
    pub fn start_far_away(delay_ms: u64, mib_per_second: f64) -> S3Server {
        S3Server::start_with(&[
            "--get-delay-ms",
            &delay_ms.to_string(),
            "--get-mib-per-second",
            &mib_per_second.to_string(),
        ])
    }

    /// Starts a private `s3-test-server` that answers every `GetObject`
    /// with the whole object, its `Range` header ignored.
    pub fn start_ignoring_ranges() -> S3Server {
        S3Server::start_with(&["--ignore-ranges"])
    }

    /// Starts a private `s3-test-server` with extra command-line `flags`.
    fn start_with(flags: &[&str]) -> S3Server {
        let mut failures = String::new();
        for attempt in 1..=3 {
            let dir = new_temp_dir("test-s3-server-");
            fs::create_dir_all(dir.path().join("data"))
                .expect("cannot create the S3 server's root");
            let port = free_port();
            let server = S3Server {
                endpoint: format!("http://127.0.0.1:{port}"),
                access_key: format!("AK{:016X}", rand::random::<u64>()),
                secret_key: format!("{:032x}", rand::random::<u128>()),
                region: "us-east-1".into(),
                local: Some(LocalS3 {
                    bin: s3_server_bin(),
                    flags: flags.iter().map(|f| f.to_string()).collect(),
                    port,
                    dir,
                    proc: ServiceProcess::new(),
                }),
            };
            match server.boot() {
                Ok(()) => return server,
                // Most likely the port was taken meanwhile: retry with another.
                Err(BootError::Exited(msg)) => {
                    let _ = writeln!(failures, "--- attempt {attempt}: {msg}");
                }
                Err(BootError::TimedOut(msg)) => panic!("{msg}"),
            }
        }
        panic!("s3-test-server failed to start 3 times:\n{failures}")
    }

    /// The external server described by `TEST_S3_ENDPOINT`,
    /// `TEST_S3_ACCESS_KEY`, `TEST_S3_SECRET_KEY`, `TEST_S3_REGION`, if set.
    pub fn external_from_env() -> Option<S3Server> {
        let endpoint = std::env::var("TEST_S3_ENDPOINT")
            .ok()
            .filter(|s| !s.is_empty())?;
        let var = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("TEST_S3_ENDPOINT is set, so {name} must be too"))
        };
        Some(S3Server::external(
            &endpoint,
            &var("TEST_S3_ACCESS_KEY"),
            &var("TEST_S3_SECRET_KEY"),
            &std::env::var("TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
        ))
    }

    /// An S3 server someone else runs, at `endpoint` (path-style), with
    /// these keys and region.
    pub fn external(endpoint: &str, access_key: &str, secret_key: &str, region: &str) -> S3Server {
        S3Server {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            region: region.to_string(),
            local: None,
        }
    }

    fn local(&self) -> &LocalS3 {
        self.local
            .as_ref()
            .expect("not possible with an external S3 server: use S3Server::start() for this test")
    }

    fn boot(&self) -> Result<(), BootError> {
        let local = self.local();
        let log = local.dir.path().join("s3-test-server.log");
        let mut cmd = Command::new(&local.bin);
        cmd.arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(local.port.to_string())
            .arg("--access-key")
            .arg(&self.access_key)
            .arg("--secret-key")
            .arg(&self.secret_key)
            .args(&local.flags)
            .arg(local.dir.path().join("data"))
            .env(
                "RUST_LOG",
                std::env::var("TEST_S3_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log));
        let child = spawn_service(cmd)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", local.bin.display()));
        local.proc.set(child);

        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, local.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = local.proc.exited() {
                return Err(BootError::Exited(format!(
                    "s3-test-server exited during startup ({status}):\n{}",
                    tail_file(&log, 40)
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                local.proc.kill();
                return Err(BootError::TimedOut(format!(
                    "s3-test-server did not listen on {addr} within 20 s:\n{}",
                    tail_file(&log, 40)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// E.g. `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The TCP port of the endpoint (for relays placed in front of it).
    pub fn port(&self) -> u16 {
        self.endpoint
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the S3 endpoint {} has no port", self.endpoint))
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn is_external(&self) -> bool {
        self.local.is_none()
    }

    /// Root directory of a local `s3-test-server` (object `KEY` of bucket `B` is the
    /// file `B/KEY` in it); `None` for an external server.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.local.as_ref().map(|l| l.dir.path().join("data"))
    }

    pub fn s3_region(&self) -> s3::Region {
        s3::Region::Custom {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
        }
    }

    pub fn credentials(&self) -> s3::creds::Credentials {
        s3::creds::Credentials::new(
            Some(&self.access_key),
            Some(&self.secret_key),
            None,
            None,
            None,
        )
        .expect("static credentials")
    }

    /// A path-style handle on bucket `name` (which need not exist).
    pub fn bucket(&self, name: &str) -> Box<s3::Bucket> {
        s3::Bucket::new(name, self.s3_region(), self.credentials())
            .expect("bucket handle")
            .with_path_style()
    }

    /// Creates bucket `name` through the S3 API and returns a handle on it.
    pub async fn create_bucket(&self, name: &str) -> Box<s3::Bucket> {
        let created = s3::Bucket::create_with_path_style(
            name,
            self.s3_region(),
            self.credentials(),
            s3::BucketConfiguration::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot create bucket {name} on {}: {e}", self.endpoint));
        assert!(
            created.success(),
            "cannot create bucket {name} on {}: HTTP {} {}",
            self.endpoint,
            created.response_code,
            created.response_text
        );
        created.bucket
    }

    /// Creates a bucket with a random name (`test-<hex>`).
    pub async fn random_bucket(&self) -> Box<s3::Bucket> {
        self.create_bucket(&super::random_name("test")).await
    }

    pub fn is_running(&self) -> bool {
        self.local().proc.is_running()
    }

    /// Stops a local server (SIGKILL; the server keeps no state besides its
    /// files). Panics for an external server.
    pub fn stop(&self) {
        self.local().proc.kill();
    }

    /// Starts a stopped local server again on the same port, keys and data.
    pub fn resume(&self) {
        assert!(!self.is_running(), "the S3 server is already running");
        if let Err(BootError::Exited(msg) | BootError::TimedOut(msg)) = self.boot() {
            panic!("{msg}");
        }
    }

    pub fn restart(&self) {
        self.stop();
        self.resume();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(local) = &self.local {
            local.proc.kill();
        }
    }
}
