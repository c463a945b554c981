//! A single-node Garage server for the benchmarks: a production S3 server
//! (Rust, AGPL-3.0, run as a separate program, never linked), installed
//! from crates.io by `scripts/install-garage`. Started in a temporary
//! folder with its own ports, keys and LMDB metadata, and killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::services::{free_port, S3Server};

/// The Garage version `scripts/install-garage` installs.
pub const VERSION: &str = "2.5.0";

/// A running single-node Garage.
pub struct Garage {
    child: Child,
    dir: tempfile::TempDir,
    /// Its S3 API.
    pub server: S3Server,
    /// `garage --version`.
    pub version: String,
}

impl Garage {
    /// The `garage` binary: `$GARAGE_BIN`, else `garage` on `$PATH` or in
    /// `~/.cargo/bin`.
    pub fn binary() -> Option<PathBuf> {
        if let Some(bin) = std::env::var_os("GARAGE_BIN") {
            return Some(PathBuf::from(bin));
        }
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if let Some(home) = std::env::var_os("HOME") {
            dirs.push(Path::new(&home).join(".cargo/bin"));
        }
        dirs.into_iter()
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    }

    /// Starts Garage from `bin` and sets it up: one node with a layout,
    /// and an access key allowed to create buckets.
    pub fn start(bin: &Path) -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("bench-garage-")
            .tempdir()
            .expect("temp dir");
        let (s3_port, rpc_port) = (free_port(), free_port());
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{root}/meta\"\n\
                 data_dir = \"{root}/data\"\n\
                 db_engine = \"lmdb\"\n\
                 replication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_secret = \"{secret:064x}\"\n\n\
                 [s3_api]\n\
                 s3_region = \"garage\"\n\
                 api_bind_addr = \"127.0.0.1:{s3_port}\"\n",
                root = dir.path().display(),
                secret = rand::random::<u128>(),
            ),
        )
        .expect("write the Garage configuration");
        let log = std::fs::File::create(dir.path().join("garage.log")).expect("log file");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let cli = |args: &[&str]| -> Result<String, String> {
            let out = Command::new(bin)
                .arg("-c")
                .arg(&config)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            } else {
                Err(format!(
                    "garage {}: {}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let mut garage = Garage {
            child,
            version: cli(&["--version"]).unwrap_or_default(),
            server: S3Server::external("http://unused", "", "", "garage"),
            dir,
        };
        // Up once it answers on its RPC port.
        let deadline = Instant::now() + Duration::from_secs(60);
        let node = loop {
            match cli(&["node", "id", "-q"]) {
                Ok(id) => break id.split('@').next().unwrap_or_default().to_string(),
                Err(e) if Instant::now() > deadline => {
                    panic!("Garage did not start within 60 s: {e}\n{}", garage.log())
                }
                Err(_) => {
                    if let Ok(Some(status)) = garage.child.try_wait() {
                        panic!("Garage exited with {status}:\n{}", garage.log());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        let must = |args: &[&str]| cli(args).unwrap_or_else(|e| panic!("{e}"));
        // `node id` reads the node's key from disk, so it can answer before
        // the RPC port does: the first command that needs RPC is retried.
        let assign = ["layout", "assign", "-z", "dc1", "-c", "100G", &node];
        while let Err(e) = cli(&assign) {
            if Instant::now() > deadline {
                panic!(
                    "Garage's RPC did not answer within 60 s: {e}\n{}",
                    garage.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        must(&["layout", "apply", "--version", "1"]);
        let key_id = format!("GK{:024x}", rand::random::<u128>() >> 32);
        let secret = format!("{:064x}", rand::random::<u128>());
        must(&["key", "import", "--yes", "-n", "bench", &key_id, &secret]);
        must(&["key", "allow", "--create-bucket", &key_id]);
        garage.server = S3Server::external(
            &format!("http://127.0.0.1:{s3_port}"),
            &key_id,
            &secret,
            "garage",
        );
        garage
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
